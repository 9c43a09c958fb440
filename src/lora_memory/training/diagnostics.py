"""Diagnostics that catch a collapsed hypernetwork (one that ignores its document)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..adapter import LoRAAdapter


def adapter_vectors(adapters: list[LoRAAdapter]) -> torch.Tensor:
    """Each document's A and B flattened into one vector: (N, D).

    Takes batched adapters (one row per document) or unbatched ones (one document each).
    """
    rows = []
    for adapter in adapters:
        ws = [w if w.A.dim() == 3 else type(w)(w.A[None], w.B[None]) for _, w in sorted(adapter.weights.items())]
        parts = [torch.cat([w.A.flatten(1), w.B.flatten(1)], dim=1) for w in ws]
        rows.append(torch.cat(parts, dim=1).float())
    width = min(r.shape[1] for r in rows)  # composed adapters may differ in rank; compare the common part
    return torch.cat([r[:, :width] for r in rows])


def adapter_spread(adapters: list[LoRAAdapter]) -> dict[str, float]:
    """Mean pairwise cosine between documents' adapters, and their spread around the mean.

    A healthy hypernetwork can still show high cosine (the shared bias rows
    dominate); the relative spread ``mean ||v_i - mean|| / ||mean||`` is the more
    telling number: near zero means every document gets the same adapter.
    """
    v = adapter_vectors(adapters)
    if v.shape[0] < 2:
        return {"adapter_cosine": float("nan"), "adapter_spread": float("nan")}
    n = F.normalize(v, dim=1)
    sim = n @ n.T
    off = sim[~torch.eye(len(v), dtype=torch.bool)]
    mean = v.mean(0)
    spread = (v - mean).norm(dim=1).mean() / mean.norm().clamp(min=1e-12)
    return {"adapter_cosine": off.mean().item(), "adapter_spread": spread.item()}

"""Per-document context distillation: the baseline a hypernetwork replaces.

One free LoRA (same targets, rank and scaling as the hypernetwork's) is trained
by gradient descent on questions about one document, using the same losses as
hypernetwork training. The reference's baseline runs 300 steps; this is also
rung 1 of the training ladder ("capacity": a rank-r LoRA can store the facts).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ...adapter import LoRAAdapter, LoRAWeights
from ...base import LoadedModel
from ...hypernet import HypernetConfig
from ...hypernet.targets import find_targets
from ..objectives import answer_loss
from .batching import qa_batch
from .data import Example


@dataclass
class BaselineResult:
    adapter: LoRAAdapter
    losses: list[float]
    seconds_per_step: float


def free_lora(base: LoadedModel, config: HypernetConfig, seed: int = 0) -> LoRAAdapter:
    """A trainable LoRA on the hypernetwork's targets: A ~ N(0, 1/d_in), B = 0 (a no-op at start)."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for t in find_targets(base.model, config.target_module, config.target_layers):
        a = (torch.randn(config.rank, t.d_in, generator=gen) / math.sqrt(t.d_in)).requires_grad_()
        b = torch.zeros(t.d_out, config.rank, requires_grad=True)
        weights[t.name] = LoRAWeights(a, b)
    return LoRAAdapter(weights, config.scaling)


def distill_document(base: LoadedModel, example: Example, config: HypernetConfig, steps: int = 300,
                     lr: float = 1e-3, seed: int = 0) -> BaselineResult:
    """Train a free LoRA on one document's question-answer pairs for ``steps`` Adam steps."""
    adapter = free_lora(base, config, seed)
    params = [p for w in adapter.weights.values() for p in (w.A, w.B)]
    opt = torch.optim.Adam(params, lr=lr)
    batch = qa_batch(base.tokenizer, [example])
    batched = adapter.as_batch()
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        loss = answer_loss(base.model, batch, batched).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    seconds = (time.perf_counter() - start) / max(1, steps)
    trained = LoRAAdapter({k: LoRAWeights(w.A.detach(), w.B.detach()) for k, w in adapter.weights.items()},
                          adapter.scaling, {"baseline": "context-distillation", "steps": steps})
    return BaselineResult(trained, losses, seconds)

"""Exporting an adapter as a PEFT directory that vLLM's multi-LoRA server loads.

vLLM serves LoRA adapters of a few ranks only (:data:`VLLM_RANKS`), one rank per
adapter, and scales by ``lora_alpha / r``. The export therefore

- zero-pads every module to the next allowed rank (zero rows of ``A`` and columns
  of ``B`` add nothing), so no ``rank_pattern`` is needed;
- folds the adapter's scaling into ``B`` (in fp32) and writes ``lora_alpha = r``, so
  any loader that computes ``lora_alpha / r`` applies a scale of exactly 1;
- refuses ranks above the largest allowed one, naming ``max_rank`` (SVD compression).

PEFT loads the result with ``PeftModel.from_pretrained(base, directory)`` and gives
the logits of :func:`lora_memory.apply.apply_adapter` (tested); vLLM cannot run on
this project's machines, see docs/serving.md for serving it on a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .adapter import LoRAAdapter, write_peft
from .errors import CollectionError, IncompatibleAdapterError

if TYPE_CHECKING:
    from .memory import LoRAMemory

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's --max-lora-rank accepts


def vllm_rank(rank: int) -> int:
    """The smallest rank vLLM serves that holds ``rank``.

    Raises:
        IncompatibleAdapterError: ``rank`` exceeds the largest one (512).
    """
    for allowed in VLLM_RANKS:
        if rank <= allowed:
            return allowed
    raise IncompatibleAdapterError(
        f"the adapter's rank {rank} exceeds the largest rank vLLM serves ({VLLM_RANKS[-1]}); compress it with "
        f"max_rank (e.g. `lora-memory export --for vllm --max-rank {VLLM_RANKS[-1]}`, or MemoryConfig(max_rank=...)), "
        "or export fewer chunks")


def export_vllm(adapter: LoRAAdapter, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write ``adapter`` as a vLLM-ready PEFT LoRA directory; returns it.

    Raises:
        ValueError: the adapter is batched.
        IncompatibleAdapterError: the adapter is empty, or its rank exceeds 512.
    """
    if adapter.batched:
        raise ValueError("export works on unbatched adapters; call unbatch() first")
    if not adapter.weights:
        raise IncompatibleAdapterError("cannot export an empty adapter")
    rank = vllm_rank(adapter.rank)
    pairs = {}
    for name, w in adapter.weights.items():
        A = torch.zeros(rank, w.A.shape[-1], dtype=torch.float32)  # (r, d_in)
        B = torch.zeros(w.B.shape[-2], rank, dtype=torch.float32)  # (d_out, r)
        A[: w.rank] = w.A.detach().float().cpu()
        B[:, : w.rank] = w.B.detach().float().cpu() * adapter.scaling
        pairs[name] = (A, B)
    # lora_alpha / r == 1: the scaling is folded into B
    return write_peft(directory, pairs, r=rank, lora_alpha=rank,
                      base_model_name_or_path=base_model_name_or_path or adapter.metadata.get("base_model"))


def export_memory_vllm(memory: LoRAMemory, directory: str | Path) -> Path:
    """Export a collection's composed adapter (every chunk, compressed to ``max_rank`` if set) for vLLM.

    Raises:
        CollectionError: the collection is empty.
        IncompatibleAdapterError: the composed rank exceeds 512 (set ``max_rank``).
    """
    adapter = memory.adapter()
    if adapter is None:
        raise CollectionError(f"collection {memory.name!r} is empty: nothing to export")
    return export_vllm(adapter, directory, base_model_name_or_path=memory.base.name)

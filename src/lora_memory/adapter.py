"""The LoRA adapter value type and its math.

An adapter holds, for each target module (by its full name in the base model,
e.g. ``model.layers.11.mlp.down_proj``), a down-projection ``A`` of shape
``(r, d_in)`` and an up-projection ``B`` of shape ``(d_out, r)``; one scalar
``scaling`` multiplies every module's output. The weight delta of a module is
``delta = scaling * B @ A``, written once here (:meth:`LoRAAdapter.delta`).

Tensors may carry a leading batch dimension ``(N, r, d_in)`` / ``(N, d_out, r)``:
that is one adapter per batch row, which is what a hypernetwork emits in training.

Example:
    >>> import torch
    >>> a = LoRAAdapter({"m": LoRAWeights(torch.randn(2, 4), torch.randn(3, 2))}, scaling=2.0)
    >>> b = LoRAAdapter({"m": LoRAWeights(torch.randn(1, 4), torch.randn(3, 1))}, scaling=2.0)
    >>> c = LoRAAdapter.concat([a, b])
    >>> c.rank, torch.allclose(c.delta("m"), a.delta("m") + b.delta("m"), atol=1e-5)
    (3, True)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CorruptEntryError, IncompatibleAdapterError

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS_NAME = "adapter.safetensors"
ADAPTER_CONFIG_NAME = "adapter.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"
FORMAT_VERSION = 1


@dataclass
class LoRAWeights:
    """One module's low-rank pair: ``A`` (r, d_in) and ``B`` (d_out, r), optionally batched."""

    A: torch.Tensor
    B: torch.Tensor

    def __post_init__(self) -> None:
        if self.A.shape[-2] != self.B.shape[-1]:
            raise ValueError(f"rank mismatch: A is {tuple(self.A.shape)}, B is {tuple(self.B.shape)}")

    @property
    def rank(self) -> int:
        """The pair's rank r (``A`` is (..., r, d_in))."""
        return self.A.shape[-2]


@dataclass
class LoRAAdapter:
    """A set of LoRA pairs, one per target module, sharing one output scaling.

    Attributes:
        weights: module name -> :class:`LoRAWeights`.
        scaling: multiplies every module's LoRA output (D2L uses ``2 * r**1.5 / r``).
        metadata: JSON-serialisable facts saved with the adapter: base-model and
            hypernetwork fingerprints, provenance (documents and chunks).
    """

    weights: dict[str, LoRAWeights]
    scaling: float = 1.0
    metadata: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------- shape
    @property
    def rank(self) -> int:
        """The largest rank over modules (all modules share it for generated adapters)."""
        return max((w.rank for w in self.weights.values()), default=0)

    @property
    def batched(self) -> bool:
        """Whether the tensors carry a leading batch dimension (one adapter per row)."""
        return any(w.A.dim() == 3 for w in self.weights.values())

    def nbytes(self) -> int:
        """Bytes held by the A and B tensors."""
        return sum(w.A.numel() * w.A.element_size() + w.B.numel() * w.B.element_size() for w in self.weights.values())

    def delta(self, module: str) -> torch.Tensor:
        """The dense weight delta ``scaling * B @ A`` of one module, shape (d_out, d_in)."""
        w = self.weights[module]
        return self.scaling * (w.B.float() @ w.A.float())

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LoRAAdapter:
        """A copy with every tensor moved/cast."""
        moved = {k: LoRAWeights(w.A.to(device=device, dtype=dtype), w.B.to(device=device, dtype=dtype))
                 for k, w in self.weights.items()}
        return LoRAAdapter(moved, self.scaling, dict(self.metadata))

    def select(self, index: torch.Tensor) -> LoRAAdapter:
        """Rows ``index`` of a batched adapter (gradients flow through the indexing)."""
        picked = {k: LoRAWeights(w.A[index], w.B[index]) for k, w in self.weights.items()}
        return LoRAAdapter(picked, self.scaling, dict(self.metadata))

    def restrict(self, modules: Collection[str], keep: bool = True) -> LoRAAdapter:
        """The modules named in ``modules`` (``keep``) or all the others, with this adapter's scaling."""
        return LoRAAdapter({k: w for k, w in self.weights.items() if (k in modules) == keep}, self.scaling,
                           dict(self.metadata))

    def scaled(self, factor: float) -> LoRAAdapter:
        """This adapter with its delta times ``factor`` (folded into the scaling)."""
        return LoRAAdapter(dict(self.weights), self.scaling * factor, dict(self.metadata))

    def as_batch(self) -> LoRAAdapter:
        """This (unbatched) adapter as a batch of one row, the shape the training losses select rows from."""
        if self.batched:
            raise ValueError("as_batch: the adapter is already batched")
        return LoRAAdapter({k: LoRAWeights(w.A[None], w.B[None]) for k, w in self.weights.items()},
                           self.scaling, dict(self.metadata))

    def unbatch(self) -> list[LoRAAdapter]:
        """Split a batched adapter into one adapter per batch row."""
        if not self.batched:
            return [self]
        n = next(iter(self.weights.values())).A.shape[0]
        return [LoRAAdapter({k: LoRAWeights(w.A[i], w.B[i]) for k, w in self.weights.items()},
                            self.scaling, dict(self.metadata)) for i in range(n)]

    # ------------------------------------------------------------ composition
    @classmethod
    def stack(cls, rows: Sequence[LoRAAdapter | None]) -> LoRAAdapter:
        """One batched adapter whose row ``i`` is ``rows[i]`` (None: no adapter on that row).

        Each module's rank is zero-padded to its widest row (zero rows of ``A`` and columns
        of ``B`` add nothing; a module is padded to its own rows, not to the adapter's widest
        module, so a rank-8 module beside a chunk-long companion memory stays cheap), modules
        missing from a row are zeros, and each row's scaling is folded into its ``B`` (in
        fp32, then cast back), so the result has scaling 1.

        Raises:
            ValueError: no row has an adapter, or two rows disagree on a module's shape.
        """
        present = [a for a in rows if a is not None]
        if not present:
            raise ValueError("stack needs at least one adapter")
        shapes: dict[str, tuple[int, int, torch.dtype, torch.device]] = {}
        ranks: dict[str, int] = {}
        for a in present:
            for name, w in a.weights.items():
                shape = (w.A.shape[-1], w.B.shape[-2], w.A.dtype, w.A.device)
                if shapes.setdefault(name, shape)[:2] != shape[:2]:
                    raise ValueError(f"module {name}: rows disagree on (d_in, d_out): {shapes[name][:2]} vs {shape[:2]}")
                ranks[name] = max(ranks.get(name, 0), w.rank)
        weights = {}
        for name, (d_in, d_out, dtype, device) in shapes.items():
            rank = ranks[name]
            A = torch.zeros(len(rows), rank, d_in, dtype=dtype, device=device)  # (N, r, d_in)
            B = torch.zeros(len(rows), d_out, rank, dtype=dtype, device=device)  # (N, d_out, r)
            for i, row in enumerate(rows):
                pair = None if row is None else row.weights.get(name)
                if row is not None and pair is not None:
                    A[i, : pair.rank] = pair.A
                    B[i, :, : pair.rank] = (pair.B.float() * row.scaling).to(dtype)
            weights[name] = LoRAWeights(A, B)
        return cls(weights, scaling=1.0)

    @classmethod
    def concat(cls, adapters: Iterable[LoRAAdapter], metadata: Mapping[str, Any] | None = None) -> LoRAAdapter:
        """Concatenate adapters along the rank axis: the result's delta is the sum of the parts'.

        Modules present in only some adapters are kept as they are. Parts with
        different scalings have their scaling folded into ``B`` first.

        Raises:
            ValueError: no adapters, or two parts disagree on a module's shape.
        """
        parts = list(adapters)
        if not parts:
            raise ValueError("concat needs at least one adapter")
        scalings = {p.scaling for p in parts}
        scaling = parts[0].scaling if len(scalings) == 1 else 1.0
        grouped: dict[str, list[LoRAWeights]] = {}
        for p in parts:
            factor = p.scaling / scaling
            for name, w in p.weights.items():
                grouped.setdefault(name, []).append(w if factor == 1.0 else LoRAWeights(w.A, w.B * factor))
        out: dict[str, LoRAWeights] = {}
        for name, ws in grouped.items():
            shapes = {(w.A.shape[-1], w.B.shape[-2]) for w in ws}
            if len(shapes) != 1:
                raise ValueError(f"module {name}: parts disagree on (d_in, d_out): {shapes}")
            out[name] = LoRAWeights(torch.cat([w.A for w in ws], dim=-2), torch.cat([w.B for w in ws], dim=-1))
        meta = dict(metadata) if metadata is not None else {**parts[0].metadata}
        return cls(out, scaling, meta)

    def compress(self, max_rank: int) -> LoRAAdapter:
        """Best rank-``max_rank`` approximation of every module's delta (truncated SVD).

        Exact when ``max_rank`` is at least the true rank. Uses QR of A and B so the SVD
        is of an (r x r) matrix, never of the dense (d_out x d_in) delta.
        """
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        if self.batched:
            raise ValueError("compress works on unbatched adapters; call unbatch() first")
        out: dict[str, LoRAWeights] = {}
        for name, w in self.weights.items():
            if w.rank <= max_rank:
                out[name] = w
                continue
            A, B = w.A.float(), w.B.float()
            qb, rb = torch.linalg.qr(B)  # B = qb @ rb, (d_out, r), (r, r)
            qa, ra = torch.linalg.qr(A.T)  # A.T = qa @ ra, (d_in, r), (r, r)
            u, s, vh = torch.linalg.svd(rb @ ra.T)  # (r, r)
            k = min(max_rank, s.numel())
            new_b = (qb @ u[:, :k]) * s[:k]  # (d_out, k)
            new_a = vh[:k] @ qa.T  # (k, d_in)
            out[name] = LoRAWeights(new_a.to(w.A.dtype), new_b.to(w.B.dtype))
        return LoRAAdapter(out, self.scaling, {**self.metadata, "compressed_to_rank": max_rank})

    # ---------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``adapter.safetensors`` and ``adapter.json`` into ``directory``."""
        if self.batched:
            raise ValueError("save works on unbatched adapters; call unbatch() first")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.state_dict(), str(directory / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
        (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> LoRAAdapter:
        """Read an adapter written by :meth:`save`.

        Raises:
            FileNotFoundError: a file is missing.
            CorruptEntryError: the files cannot be parsed or do not match each other.
        """
        directory = Path(directory)
        try:
            config = json.loads((directory / ADAPTER_CONFIG_NAME).read_text())
            tensors = load_file(str(directory / ADAPTER_WEIGHTS_NAME), device=str(device))
        except (json.JSONDecodeError, SafetensorError, UnicodeDecodeError) as exc:
            raise CorruptEntryError(f"cannot read adapter in {directory}: {exc}") from exc
        return cls.from_state_dict(tensors, config)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors ``{module}.lora_A`` / ``{module}.lora_B``, contiguous, for safetensors."""
        out = {}
        for name, w in self.weights.items():
            out[f"{name}.lora_A"] = w.A.detach().contiguous()
            out[f"{name}.lora_B"] = w.B.detach().contiguous()
        return out

    def config_dict(self) -> dict[str, Any]:
        """The JSON side of :meth:`save`: scaling, ranks, metadata and the format version."""
        return {"format_version": FORMAT_VERSION, "scaling": self.scaling, "rank": self.rank,
                "modules": sorted(self.weights), "metadata": self.metadata}

    @classmethod
    def from_state_dict(cls, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> LoRAAdapter:
        """Rebuild an adapter from :meth:`state_dict` output and :meth:`config_dict` output.

        Raises:
            CorruptEntryError: a module listed in the config has no tensors, or shapes disagree.
        """
        try:
            weights = {m: LoRAWeights(tensors[f"{m}.lora_A"], tensors[f"{m}.lora_B"]) for m in config["modules"]}
            return cls(weights, float(config["scaling"]), dict(config.get("metadata", {})))
        except (KeyError, ValueError, TypeError) as exc:
            raise CorruptEntryError(f"adapter tensors do not match their config: {exc}") from exc

    # --------------------------------------------------------------- PEFT
    def export_peft(self, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
        """Write a standard PEFT LoRA directory (``adapter_config.json`` + ``adapter_model.safetensors``).

        PEFT scales by ``lora_alpha / r``; we set ``lora_alpha = scaling * r`` so the
        result is identical. Modules of a different rank get a ``rank_pattern`` /
        ``alpha_pattern`` entry. ``peft.PeftModel.from_pretrained(base, directory)`` loads it
        and vLLM's multi-LoRA server can serve it.
        """
        if self.batched:
            raise ValueError("export_peft works on unbatched adapters; call unbatch() first")
        if not self.weights:
            raise IncompatibleAdapterError("cannot export an empty adapter")
        r = self.rank
        rank_pattern = {name: w.rank for name, w in self.weights.items() if w.rank != r}
        alpha_pattern = {name: self.scaling * rank for name, rank in rank_pattern.items()}
        return write_peft(directory, {name: (w.A.detach(), w.B.detach()) for name, w in self.weights.items()},
                          r=r, lora_alpha=self.scaling * r,
                          base_model_name_or_path=base_model_name_or_path or self.metadata.get("base_model"),
                          rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)



def write_peft(directory: str | Path, pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]], *, r: int,
               lora_alpha: float, base_model_name_or_path: str | None,
               rank_pattern: Mapping[str, int] | None = None,
               alpha_pattern: Mapping[str, float] | None = None) -> Path:
    """Write a standard PEFT LoRA directory: ``adapter_model.safetensors`` beside ``adapter_config.json``.

    Args:
        directory: where to write (created if missing).
        pairs: per target module (full name in the base model), its ``(A, B)`` as PEFT stores them.
        r: the default rank.
        lora_alpha: PEFT scales every module by ``lora_alpha / r``.
        base_model_name_or_path: recorded in the config for loaders that look the base model up.
        rank_pattern: modules whose rank differs from ``r``.
        alpha_pattern: their ``lora_alpha``.

    Returns:
        ``directory``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (a, b) in pairs.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(directory / PEFT_WEIGHTS_NAME), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": lora_alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": sorted(pairs),
        "rank_pattern": dict(rank_pattern or {}),
        "alpha_pattern": dict(alpha_pattern or {}),
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }
    (directory / PEFT_CONFIG_NAME).write_text(json.dumps(config, indent=2))
    return directory

# ---------------------------------------------------------------- composition of chunk adapters
def _bias_weight(n_parts: int) -> float:
    """The weight of the bias rows appended to an ``n_parts`` composition: the parts hold it ``n_parts`` times."""
    return -(n_parts - 1.0)


def compose(parts: list[LoRAAdapter], bias: LoRAAdapter | None = None,
            metadata: Mapping[str, Any] | None = None) -> LoRAAdapter:
    """Chunk adapters -> one adapter: concatenated along rank, the shared bias counted once.

    Every chunk adapter a hypernetwork writes contains its shared term
    ``bias.B @ bias.A``; with ``bias`` an extra rank-r part of weight ``-(K - 1)``
    is appended so that K chunks count it once, as a single-chunk document does.

    Args:
        parts: the chunk adapters (unbatched), in document order.
        bias: the document-independent part every chunk holds, or None to add the parts as they are.
        metadata: the result's metadata (default: the first part's).

    Raises:
        ValueError: no parts, or two parts disagree on a module's shape.
    """
    if not parts:
        raise ValueError("compose needs at least one chunk adapter")
    extra = []
    if bias is not None and len(parts) > 1:
        weight = _bias_weight(len(parts))
        extra = [LoRAAdapter({k: LoRAWeights(w.A, weight * w.B) for k, w in bias.weights.items()}, bias.scaling)]
    return LoRAAdapter.concat(parts + extra, metadata=metadata)


def compose_rows(adapter: LoRAAdapter, groups: list[list[int]], bias: LoRAAdapter | None = None) -> LoRAAdapter:
    """:func:`compose` for a batch: per-chunk rows -> one row per group of chunks (a document).

    ``groups[i]`` lists the rows of ``adapter`` that make up document ``i``.
    Shorter groups are padded with zero rank rows, which add nothing, so every
    row has the same rank; gradients flow through every row and through ``bias``.
    """
    if all(len(g) == 1 for g in groups):
        return adapter.select(torch.tensor([g[0] for g in groups]))
    k = max(len(g) for g in groups)
    weights = torch.tensor([_bias_weight(len(g)) for g in groups])  # (N,)
    out = {}
    for name, w in adapter.weights.items():
        C, r, d_in = w.A.shape
        pad_a = w.A.new_zeros(1, r, d_in)
        pad_b = w.B.new_zeros(1, w.B.shape[1], r)
        a_all, b_all = torch.cat([w.A, pad_a]), torch.cat([w.B, pad_b])  # index C is the zero pad
        idx = torch.tensor([g + [C] * (k - len(g)) for g in groups])  # (N, k)
        a = a_all[idx].reshape(len(groups), k * r, d_in)  # (N, k*r, d_in)
        b = b_all[idx].permute(0, 2, 1, 3).reshape(len(groups), -1, k * r)  # (N, d_out, k*r)
        if bias is not None:
            bw = bias.weights[name]
            a = torch.cat([a, bw.A.expand(len(groups), -1, -1)], dim=1)
            b = torch.cat([b, weights.to(b)[:, None, None] * bw.B], dim=2)
        out[name] = LoRAWeights(a, b)
    return LoRAAdapter(out, adapter.scaling, dict(adapter.metadata))

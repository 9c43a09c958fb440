"""Text-to-LoRA (T2L): a plain-language task description -> a LoRA adapter in one forward pass.

Flow: a frozen sentence encoder embeds the description (:mod:`.task_encoders`);
the embedding goes through Linear + LayerNorm and is concatenated with a
learned embedding of each target slot (layer depth, module type and, for the
smaller variants, which factor and rank row); a mixer and residual MLP blocks
turn every slot into a feature vector; one linear head per module type turns
it into LoRA factors. Variants (as in the T2L paper):

- ``L``: one slot per (layer, module); the head emits all of A and B,
  ``r * (d_in + d_out)`` numbers.
- ``M``: two slots per (layer, module), one for A and one for B; the head is
  shared by A and B and emits ``r * max(d_in, d_out)`` numbers.
- ``S``: ``2 r`` slots per (layer, module), one per rank row of A or column of
  B; the head emits ``max(d_in, d_out)`` numbers.

Every variant adds a learned, description-independent "bias LoRA" per target
(A starts as PEFT's kaiming-uniform init, B at zero) and starts with zero head
weights, so a fresh T2L emits exactly a standard LoRA initialisation: a no-op.

Example:
    >>> base = load_base_model()  # doctest: +SKIP
    >>> t2l = TextToLoRA.from_pretrained(DEFAULT_T2L_CHECKPOINT, base=base)  # doctest: +SKIP
    >>> adapter = t2l.task_adapter(base, "Answer with one word, in capital letters.")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..adapter import LoRAAdapter, LoRAWeights
from ..base import LoadedModel
from ..errors import IncompatibleAdapterError
from ..saved_config import SavedConfig
from .pretrained import PretrainedHypernet
from .targets import decoder_layers, find_targets
from .task_encoders import TaskEncoder, build_task_encoder, encoder_dim

T2L_CONFIG_VERSION = 1


class T2LConfig(SavedConfig):
    """Text-to-LoRA configuration; the ``base_*`` fields are filled by :meth:`TextToLoRA.for_base_model`."""

    variant: Literal["L", "M", "S"] = Field("L", description="Head size: L (full), M (shared A/B), S (per rank row).")
    target_modules: list[str] = Field(["self_attn.q_proj", "self_attn.v_proj"],
                                      description="Name suffixes of the LoRA targets inside each layer.")
    target_layers: list[int] | None = Field(None, description="Layers that get LoRA; None means all.")
    rank: int = Field(8, ge=1, description="LoRA rank.")
    lora_scaling: float = Field(2.0, gt=0, description="LoRA output scaling (alpha / r; 16 / 8 in T2L).")
    task_encoder: Literal["minilm", "base"] = Field(
        "minilm", description="minilm: all-MiniLM-L6-v2 sentence embeddings; base: the base model's own states.")
    hidden_dim: int = Field(128, ge=8, description="Width of the slot features and MLP blocks.")
    n_blocks: int = Field(2, ge=0, description="Residual MLP blocks.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout in the MLP blocks (training only).")

    # discovered from the base model and the task encoder
    base_fingerprint: str | None = None
    base_name: str | None = None
    layers_prefix: str | None = Field(None, description="Qualified name of the decoder layer list.")
    module_dims: dict[str, tuple[int, int]] | None = Field(None, description="Target suffix -> (d_in, d_out).")
    task_embed_dim: int | None = Field(None, description="Size of the task encoder's embeddings.")
    config_version: int = T2L_CONFIG_VERSION


    @model_validator(mode="after")
    def _check(self) -> T2LConfig:
        if not self.target_modules or len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError(f"target_modules must be non-empty and unique, got {self.target_modules}")
        if self.module_dims is not None and set(self.module_dims) != set(self.target_modules):
            raise ValueError("module_dims must have one entry per target module")
        return self

    @property
    def bound(self) -> bool:
        """Whether the base model's shapes are filled in (``for_base_model`` does it)."""
        return None not in (self.module_dims, self.task_embed_dim, self.target_layers, self.layers_prefix)

    @property
    def units(self) -> int:
        """Slots per (layer, module): 1 for L, 2 (A, B) for M, 2 * rank for S."""
        return {"L": 1, "M": 2, "S": 2 * self.rank}[self.variant]

    def module_name(self, layer: int, suffix: str) -> str:
        """The full name of the target module ``suffix`` in decoder layer ``layer``."""
        return f"{self.layers_prefix}.{layer}.{suffix}"


class ResidualMLP(nn.Module):
    """Pre-norm residual block: x + W2 silu(W1 LN(x))."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A residual MLP block: ``x + MLP(LayerNorm(x))``, shape kept (N, D)."""
        return x + self.drop(self.down(nn.functional.silu(self.up(self.norm(x)))))


class TextToLoRA(PretrainedHypernet):
    """Generates a LoRA adapter for the base model from a task-description embedding."""

    slot_ids: torch.Tensor  # (S, 3) module, layer and unit index of every output slot (a buffer)

    config_class = T2LConfig
    kind = "T2L hypernetwork"

    def __init__(self, config: T2LConfig):
        if not config.bound:
            raise ValueError("config is not bound to a base model; use TextToLoRA.for_base_model")
        super().__init__(config)
        assert config.target_layers is not None and config.module_dims is not None and config.task_embed_dim is not None
        D, r, n_layers = config.hidden_dim, config.rank, len(config.target_layers)
        n_mod, U = len(config.target_modules), config.units
        self.task_proj = nn.Sequential(nn.Linear(config.task_embed_dim, D), nn.LayerNorm(D))
        self.layer_emb = nn.Embedding(n_layers, D)
        self.module_emb = nn.Embedding(n_mod, D)
        self.unit_emb = nn.Embedding(U, D)
        self.mixer = nn.Linear(4 * D, D)
        self.blocks = nn.Sequential(*[ResidualMLP(D, config.dropout) for _ in range(config.n_blocks)])
        self.out_norm = nn.LayerNorm(D)
        self.heads = nn.ModuleList()
        self.bias_a = nn.ParameterList()
        self.bias_b = nn.ParameterList()
        for suffix in config.target_modules:
            d_in, d_out = config.module_dims[suffix]
            out = r * (d_in + d_out) if config.variant == "L" else r * max(d_in, d_out) * 2 // U
            head = nn.Linear(D, out, bias=False)
            nn.init.zeros_(head.weight)  # the description starts with no influence: output = bias LoRA
            self.heads.append(head)
            bound = 1 / math.sqrt(d_in)  # PEFT's kaiming_uniform(a=sqrt(5)) bound for A
            self.bias_a.append(nn.Parameter(torch.empty(n_layers, r, d_in).uniform_(-bound, bound)))
            self.bias_b.append(nn.Parameter(torch.zeros(n_layers, d_out, r)))
        # slot ids: (module, layer, unit) for every slot, module-major
        grid = torch.cartesian_prod(torch.arange(n_mod), torch.arange(n_layers), torch.arange(U))
        self.register_buffer("slot_ids", grid, persistent=False)  # (n_mod * n_layers * U, 3)
        self._encoder: TaskEncoder | None = None

    # -------------------------------------------------------------- building
    @classmethod
    def for_base_model(cls, base: LoadedModel, config: T2LConfig | None = None, **overrides: Any) -> TextToLoRA:
        """A freshly initialised T2L sized for ``base`` (dimensions discovered, not hard-coded).

        Raises:
            IncompatibleAdapterError: a target module is missing or differs in shape across layers.
        """
        config = (config or T2LConfig()).with_overrides(**overrides)
        prefix, stack = decoder_layers(base.model)
        layers = config.target_layers if config.target_layers is not None else list(range(len(stack)))
        dims: dict[str, tuple[int, int]] = {}
        for suffix in config.target_modules:
            shapes = {(t.d_in, t.d_out) for t in find_targets(base.model, suffix, layers)}
            if len(shapes) != 1:
                raise IncompatibleAdapterError(f"{suffix} differs in shape across layers: {shapes}")
            dims[suffix] = shapes.pop()
        bound = T2LConfig(**{
            **config.model_dump(),
            "target_layers": layers,
            "layers_prefix": prefix,
            "module_dims": dims,
            "task_embed_dim": encoder_dim(config.task_encoder, base),
            "base_fingerprint": base.fingerprint,
            "base_name": base.name,
        })
        return cls(bound)

    # ------------------------------------------------------------- forward
    def forward(self, task_emb: torch.Tensor) -> LoRAAdapter:
        """Task embeddings (N, E) -> a batched adapter with N rows."""
        cfg = self.config
        r, n_layers, U = cfg.rank, len(cfg.target_layers), cfg.units
        dtype = self.mixer.weight.dtype
        N = task_emb.shape[0]
        task = self.task_proj(task_emb.to(dtype))  # (N, D)
        m, l, u = self.slot_ids.unbind(-1)
        slots = torch.cat([self.module_emb(m), self.layer_emb(l), self.unit_emb(u)], dim=-1)  # (S, 3D)
        x = torch.cat([task[:, None].expand(-1, slots.shape[0], -1), slots[None].expand(N, -1, -1)], dim=-1)
        x = self.out_norm(self.blocks(self.mixer(x)))  # (N, S, D)
        x = x.view(N, len(cfg.target_modules), n_layers * U, -1)
        weights: dict[str, LoRAWeights] = {}
        for i, suffix in enumerate(cfg.target_modules):
            d_in, d_out = cfg.module_dims[suffix]
            y = self.heads[i](x[:, i])  # (N, n_layers * U, out)
            if cfg.variant == "L":
                y = y.view(N, n_layers, r, d_in + d_out)
                a, b = y[..., :d_in], y[..., d_in:]  # (N, n_layers, r, d_in), (N, n_layers, r, d_out)
            else:  # M and S both give two factors of r rows of max(d_in, d_out)
                y = y.view(N, n_layers, 2, r, max(d_in, d_out))
                a, b = y[:, :, 0, :, :d_in], y[:, :, 1, :, :d_out]
            a = self.bias_a[i] + a
            b = self.bias_b[i] + b.transpose(-1, -2)  # (N, n_layers, d_out, r)
            for j, layer in enumerate(cfg.target_layers):
                weights[cfg.module_name(layer, suffix)] = LoRAWeights(a[:, j], b[:, j])
        return LoRAAdapter(weights, cfg.lora_scaling, self._metadata())

    def encoder(self, base: LoadedModel) -> TaskEncoder:
        """The frozen task encoder this T2L was trained with (built once, then reused)."""
        if self._encoder is None or not self._encoder.fits(base):
            self._encoder = build_task_encoder(self.config.task_encoder, base)
        return self._encoder

    def embed(self, base: LoadedModel, descriptions: list[str]) -> torch.Tensor:
        """Task embeddings (N, E) of the descriptions, on this module's device."""
        return self.encoder(base).encode(descriptions).to(self.mixer.weight.device)

    def task_adapters(self, base: LoadedModel, descriptions: list[str]) -> list[LoRAAdapter]:
        """One unbatched adapter per description.

        Raises:
            ValueError: a description is empty.
            IncompatibleAdapterError: this T2L was built for another base model.
        """
        self.check_base(base)
        if any(not d.strip() for d in descriptions):
            raise ValueError("task descriptions must be non-empty text")
        with torch.inference_mode():
            adapter = self(self.embed(base, descriptions))
        out = adapter.unbatch()
        for single, description in zip(out, descriptions):
            single.metadata = {**single.metadata, "t2l_fingerprint": self.fingerprint, "task": description}
        return out

    def task_adapter(self, base: LoadedModel, description: str) -> LoRAAdapter:
        """The adapter for one task description (see :meth:`task_adapters`)."""
        return self.task_adapters(base, [description])[0]

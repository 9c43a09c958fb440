"""Heads: from trunk vectors to rows of A and columns of B, per target layer.

For layer l and rank row j:
    A[l, j] = bias_A[l, j] + scale_A[l, j] * map_A_l(z_A[l, j])   (d_in,)
    B[:, j] = bias_B[l, j] + scale_B[l, j] * map_B_l(z_B[l, j])   (d_out,)
Maps are per layer, optionally low rank (H -> head_rank -> d) to keep the
checkpoint small. ``bias_B`` starts at zero and either the maps' second factor
(``zero_map``) or ``scale_B`` (``zero_b_scaler``, as in D2L) starts at zero, so
the generated adapter is a no-op at initialisation. The bias rows carry the
document-independent part of every adapter (D2L's "bias LoRA").

With key rows from the trunk (``activation_keys``), A also gets
``key_gain[l] * key[l, j] / |key[l, j]|``: the target module's own input where the
document said what B[:, j] writes. ``key_gain`` starts at zero, so adding it to a
trained checkpoint keeps its adapters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import HypernetConfig


class _LayerMaps(nn.Module):
    """Per-layer linear maps (L, r, D) -> (L, r, d), full or factored through ``rank``."""

    def __init__(self, n_layers: int, d_in: int, d_out: int, rank: int | None, zero: bool):
        super().__init__()
        if rank is None:
            self.first = None
            self.second = nn.Parameter(torch.randn(n_layers, d_in, d_out) / math.sqrt(d_in))
        else:
            self.first = nn.Parameter(torch.randn(n_layers, d_in, rank) / math.sqrt(d_in))
            self.second = nn.Parameter(torch.randn(n_layers, rank, d_out) / math.sqrt(rank))
        if zero:
            nn.init.zeros_(self.second)

    @torch.no_grad()
    def widen(self, rank: int) -> None:
        """Factor through ``rank`` (> the current rank) and compute the same map: the new columns of the first
        factor are small and random (a tenth of the usual scale, so Adam's first steps on the new rows of the
        second factor, which start at zero, move the adapters gently), and training grows them (Net2Net-style).
        """
        if self.first is None or rank <= self.first.shape[-1]:
            raise ValueError(f"can only widen a factored map to a larger rank, got {rank}")
        n_layers, d_in, old = self.first.shape
        extra = torch.randn(n_layers, d_in, rank - old, dtype=self.first.dtype, device=self.first.device)
        self.first = nn.Parameter(torch.cat([self.first, 0.1 * extra / math.sqrt(d_in)], dim=-1))
        zeros = self.second.new_zeros(n_layers, rank - old, self.second.shape[-1])
        self.second = nn.Parameter(torch.cat([self.second, zeros], dim=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # z: (N, L, r, D)
        if self.first is not None:
            z = torch.einsum("nlrd,ldk->nlrk", z, self.first)
        return torch.einsum("nlrk,lke->nlre", z, self.second)


class LoRAHeads(nn.Module):
    """Turns trunk output (N, L, 2, r, D) into A (N, L, r, d_in) and B (N, L, d_out, r)."""

    def __init__(self, config: HypernetConfig, trunk_dim: int):
        super().__init__()
        L, r = len(config.layers), config.rank
        d_in, d_out = config.module_d_in, config.module_d_out
        assert d_in is not None and d_out is not None, "config is not bound to a base model"
        zero_map = config.head_init == "zero_map"
        self.l2 = config.l2_normalize
        self.map_a = _LayerMaps(L, trunk_dim, d_in, config.head_rank, zero=zero_map)
        self.map_b = _LayerMaps(L, trunk_dim, d_out, config.head_rank, zero=zero_map)
        self.bias_a = nn.Parameter(torch.randn(L, r, d_in) / math.sqrt(d_in))
        self.bias_b = nn.Parameter(torch.zeros(L, r, d_out))
        self.scale_a = nn.Parameter(torch.ones(L, r, 1))
        self.scale_b = nn.Parameter(torch.ones(L, r, 1) if zero_map else torch.zeros(L, r, 1))
        self.key_gain: nn.Parameter | None = None
        if config.activation_keys:
            self.add_key_gain()

    @torch.no_grad()
    def add_key_gain(self) -> None:
        """Start reading key rows, with a zero gain (the adapters do not change until it is trained).

        Raises:
            ValueError: the heads already read key rows.
        """
        if self.key_gain is not None:
            raise ValueError("the heads already read key rows")
        L, _, d_in = self.bias_a.shape
        self.key_gain = nn.Parameter(self.bias_a.new_zeros(L, 1, d_in))

    def forward(self, z: torch.Tensor, keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk embeddings (N, L, 2, r, D) and key rows (N, L, r, d_in) or None -> per-layer ``A``
        (N, L, r, d_in) and ``B`` (N, L, d_out, r).

        Raises:
            ValueError: key rows were given to heads without a key gain, or none to heads with one.
        """
        if (keys is None) != (self.key_gain is None):
            raise ValueError("key rows and the heads' key gain come together (config.activation_keys)")
        if self.l2:
            z = F.normalize(z, dim=-1)
        a = self.bias_a + self.scale_a * self.map_a(z[:, :, 0])  # (N, L, r, d_in)
        if keys is not None and self.key_gain is not None:
            a = a + self.key_gain * F.normalize(keys, dim=-1)  # unit rows: the gain is the row's norm
        b = self.bias_b + self.scale_b * self.map_b(z[:, :, 1])  # (N, L, r, d_out)
        return a, b.transpose(-1, -2)  # B is (d_out, r) per layer

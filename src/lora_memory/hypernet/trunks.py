"""Hypernetwork trunks: from base-model token states to one vector per (layer, rank row, A|B).

Both trunks map ``states`` of shape (N, S, T, H) (S = 1 for a shared early-exit
input, S = L for each target layer's own input) and a padding ``mask`` (N, T) to
``z`` of shape (N, L, 2, r, D): one vector per target layer, per A/B, per rank row.

- :class:`PoolingTrunk` (the default) is direct attention pooling: r learned
  queries per layer and per A/B attend over keys projected from the token states
  and return the attention-weighted token states themselves. A CPU experiment
  showed it learns needle retrieval in minutes where the Perceiver collapsed.
  With ``query_hops > 1`` it pools again with queries that add a projection of
  what they pooled, so the queries depend on the document. With
  ``activation_keys`` it also pools the target modules' own inputs, one token
  before each B row's tokens (key rows for the heads).
- :class:`PerceiverTrunk` is the reference D2L design: latents cross-attend over
  the projected context, then a decoder with one query per rank row reads them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import HypernetConfig


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis where ``mask`` (broadcastable, True = keep) holds."""
    return torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=-1)


class PoolingTrunk(nn.Module):
    """Direct attention pooling of normalised token states."""

    def __init__(self, config: HypernetConfig):
        super().__init__()
        H, L, r = config.base_hidden_size, len(config.layers), config.rank
        assert H is not None, "config is not bound to a base model"
        self.norm = nn.RMSNorm(H, elementwise_affine=False)  # tames outlier activations
        self.key = nn.Linear(H, config.key_dim, bias=False)
        self.queries = nn.Parameter(torch.randn(L, 2, r, config.key_dim) / math.sqrt(config.key_dim))
        self.hops = nn.ModuleList()
        self._grow(config.query_hops)
        self.out_dim = H

    @torch.no_grad()
    def add_hops(self, query_hops: int) -> None:
        """Grow to ``query_hops`` pooling passes. The new ones start at zero (each later pass begins as the first),
        so the output is unchanged.
        """
        if query_hops <= len(self.hops) + 1:
            raise ValueError(f"can only add pooling passes: has {len(self.hops) + 1}, got query_hops={query_hops}")
        self._grow(query_hops)

    def _grow(self, query_hops: int) -> None:
        ref = self.key.weight
        while len(self.hops) < query_hops - 1:
            hop = nn.Linear(ref.shape[1], ref.shape[0], bias=False).to(ref)
            nn.init.zeros_(hop.weight)
            self.hops.append(hop)

    def forward(self, states: torch.Tensor, mask: torch.Tensor, acts: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token states (N, S, T, H) and mask (N, T) -> chunk embeddings (N, L, 2, r, H).

        With ``acts`` (N, L, T, d_in), the target modules' inputs, also returns the key rows (N, L, r, d_in):
        each B row's attention over the tokens, moved one token back, pools those inputs. So a slot's key is
        the activation that predicts the token its B row read.
        """
        N, S, T, H = states.shape
        x = self.norm(states)  # (N, S, T, H)
        keys = self.key(x)  # (N, S, T, dk)
        L, _, r, dk = self.queries.shape
        q = self.queries.reshape(1, L, 2 * r, dk).expand(N, -1, -1, -1)
        z, attn = self._pool(q, keys, x, mask)
        for hop in self.hops:
            z, attn = self._pool(q + hop(z), keys, x, mask)
        if acts is None:
            return z.reshape(N, L, 2, r, H), None
        before = F.pad(attn[:, :, r:, 1:], (0, 1))  # weight of token t+1 moved to t, (N, L, r, T)
        return z.reshape(N, L, 2, r, H), torch.einsum("nlqt,nltd->nlqd", before, acts.to(z.dtype))

    @staticmethod
    def _pool(q: torch.Tensor, keys: torch.Tensor, x: torch.Tensor, mask: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries (N, L, 2r, dk) over keys (N, S, T, dk) -> pooled states (N, L, 2r, H) and weights (N, L, 2r, T)."""
        dk = q.shape[-1]
        if keys.shape[1] == 1:
            scores = torch.einsum("nlqd,ntd->nlqt", q, keys[:, 0]) / math.sqrt(dk)  # (N, L, 2r, T)
            attn = _masked_softmax(scores, mask[:, None, None, :])
            return torch.einsum("nlqt,nth->nlqh", attn, x[:, 0]), attn
        scores = torch.einsum("nlqd,nltd->nlqt", q, keys) / math.sqrt(dk)
        attn = _masked_softmax(scores, mask[:, None, None, :])
        return torch.einsum("nlqt,nlth->nlqh", attn, x), attn


class _SwiGLU(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.gate = nn.Linear(d_in, d_hidden, bias=False)
        self.up = nn.Linear(d_in, d_hidden, bias=False)
        self.down = nn.Linear(d_hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class _CrossBlock(nn.Module):
    """Pre-norm cross-attention (queries attend to ``context``) then a SwiGLU MLP, both residual."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.RMSNorm(dim), nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.attn = nn.MultiheadAttention(dim, n_heads, batch_first=True, bias=False)
        self.mlp = _SwiGLU(dim, 4 * dim, dim)

    def forward(self, q: torch.Tensor, context: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        kv = self.norm_kv(context)
        q = q + self.attn(self.norm_q(q), kv, kv, key_padding_mask=pad, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


class PerceiverTrunk(nn.Module):
    """The reference D2L Perceiver: latents read the context, rank-row queries read the latents."""

    def __init__(self, config: HypernetConfig):
        super().__init__()
        H, D, L, r = config.base_hidden_size, config.latent_dim, len(config.layers), config.rank
        assert H is not None, "config is not bound to a base model"
        self.proj = _SwiGLU(H, 2 * D, D)
        self.latents = nn.Parameter(torch.randn(config.n_latents, D) * 0.02)
        self.encoder = nn.ModuleList(_CrossBlock(D, config.n_heads) for _ in range(config.n_blocks))
        self.decoder = _CrossBlock(D, config.n_heads)
        self.rank_queries = nn.Parameter(torch.randn(L, 2, r, D) * 0.02)
        self.out_dim = D

    def forward(self, states: torch.Tensor, mask: torch.Tensor, acts: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, None]:
        """Token states (N, S, T, H) and mask (N, T) -> chunk embeddings (N, L, 2, r, D); no key rows (the config
        refuses ``activation_keys`` for this trunk).
        """
        N, S, T, _ = states.shape
        L, _, r, D = self.rank_queries.shape
        ctx = self.proj(states.reshape(N * S, T, -1))  # (N*S, T, D)
        lat = self.latents.expand(N * S, -1, -1)
        pad = torch.cat([~mask, torch.zeros(N, lat.shape[1], dtype=torch.bool, device=mask.device)], dim=1)
        pad = pad.repeat_interleave(S, dim=0)  # (N*S, T + n_latents), True = ignore
        for block in self.encoder:  # keys/values are the context and the latents together (D2L)
            lat = block(lat, torch.cat([ctx, lat], dim=1), pad)
        if S == 1:
            q = self.rank_queries.reshape(1, L * 2 * r, D).expand(N, -1, -1)
            z = self.decoder(q, lat, None)  # (N, L*2r, D)
        else:
            q = self.rank_queries.reshape(L, 2 * r, D).repeat(N, 1, 1)  # (N*L, 2r, D)
            z = self.decoder(q, lat, None)
        return z.reshape(N, L, 2, r, D), None


def build_trunk(config: HypernetConfig) -> PoolingTrunk | PerceiverTrunk:
    """The trunk ``config.trunk`` names (attention pooling or Perceiver)."""
    trunks: dict[str, type[PoolingTrunk | PerceiverTrunk]] = {"pooling": PoolingTrunk, "perceiver": PerceiverTrunk}
    return trunks[config.trunk](config)

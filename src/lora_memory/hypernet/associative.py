"""The associative reader: a closed-form Doc-to-LoRA that stores a chunk's next tokens in the target modules.

Nothing is trained. For each target module (``mlp.down_proj`` of a late layer by
default) the chunk is run through the frozen base model and, at every position t,
the module's input ``k_t`` (the key) is paired with the output embedding of the
chunk's next token ``v_t = alpha * E[token_{t+1}]`` (the value). The adapter is the
least-squares associative memory of those pairs (as MEMIT edits a model):

    delta_W = V K^T (mu C + K K^T)^-1

where ``C`` is the covariance of the module's inputs over ordinary text (fitted once
on training-split articles, :meth:`AssociativeReader.fit`). ``C`` keeps the update
small along directions that other inputs use, so the memory fires where the
question's context resembles the chunk's. At query time a reply that restates the
question ("When was X founded?" answered "X was founded in") meets the chunk's key
for that context, and the stored next token is promoted.

As a LoRA: ``B = alpha * V`` (d_out, T-1) and ``A = (mu I + K P K^T)^-1 K P``
(T-1, d_in) with ``P = C^-1`` (the Woodbury form of the same solve: a (T-1)-square
system per chunk instead of a d_in-square one). The rank is the chunk's length, so
composing chunks along rank (``DocToLoRA.compose``; the reader has no bias to count
once) sums their memories, as the learned reader's do.

With ``associative_map_rank`` r > 0 the reader also has trained maps, both starting
at the identity so training starts from the closed form: the query ``x`` meets the
stored keys as ``(I + U V^T) x`` (U, V of shape (d_in, r): ``A <- A (I + V U^T)``), so
a question's context can learn to land where the text's own context did; and each
stored value ``e`` becomes ``e (I + W)`` (W of shape (d_out, d_out)). The solve has no
parameters and runs without gradient, so training costs little beyond the base
model's passes (``lora-memory train`` with ``init_from`` a fitted reader).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapter import LoRAAdapter, LoRAWeights
from ..base import LoadedModel
from ..chunking import Chunk, chunk_text
from .config import HypernetConfig
from .encoding import EncodedChunks
from .model import DocToLoRA

# the defaults picked on the written questions' validation part (docs/training.md, "The ninth attempt")
ASSOCIATIVE_DEFAULTS: dict[str, Any] = {"reader": "associative", "target_layers": [24], "activation_keys": True,
                                        "chat_wrap": False, "dedupe_bias": False, "input_layer": None}
RIDGE = 1e-2  # C gets this share of its mean diagonal added, so its inverse exists on any corpus


class AssociativeReader(DocToLoRA):
    """A Doc-to-LoRA whose adapters are closed-form associative memories of each chunk (see the module doc)."""

    kind = "associative Doc-to-LoRA reader"

    def __init__(self, config: HypernetConfig):
        if config.reader != "associative":
            raise ValueError(f"AssociativeReader needs reader='associative', got {config.reader!r}")
        super().__init__(config)
        assert config.module_d_in is not None  # checked by DocToLoRA
        n, d = len(config.layers), config.module_d_in
        # a parameter (never trained) so it is saved, moved and fingerprinted like any hypernetwork weight
        self.key_covariance = nn.Parameter(torch.eye(d).repeat(n, 1, 1), requires_grad=False)
        self._precision: tuple[tuple[torch.device, int], torch.Tensor] | None = None
        r, d_out = config.associative_map_rank, config.module_d_out
        if r:  # trained maps that start as the identity: the closed form is where training begins
            assert d_out is not None
            self.query_u = nn.Parameter(torch.zeros(n, d, r))
            self.query_v = nn.Parameter(torch.randn(n, d, r) / d**0.5)
            self.value_map = nn.Parameter(torch.zeros(n, d_out, d_out))

    @classmethod
    def for_base_model(cls, base: LoadedModel, config: HypernetConfig | None = None,
                       **overrides: Any) -> DocToLoRA:
        """An associative reader sized for ``base`` (identity covariance until :meth:`fit`)."""
        return super().for_base_model(base, config, **{**ASSOCIATIVE_DEFAULTS, **overrides})

    @classmethod
    @torch.no_grad()
    def fit(cls, base: LoadedModel, texts: list[str], batch_size: int = 8, progress: bool = True,
            **overrides: Any) -> AssociativeReader:
        """Build a reader for ``base`` with the key covariance measured on ``texts`` (chunked as documents are).

        Raises:
            ValueError: ``texts`` gives no keys, or an override is not a :class:`HypernetConfig` field.
        """
        reader = cls.for_base_model(base, **overrides)
        assert isinstance(reader, AssociativeReader)
        chunks = [c for text in texts for c in chunk_text(base.tokenizer, text, reader.config.max_chunk_tokens)]
        total = torch.zeros_like(reader.key_covariance)
        count = 0
        for start in tqdm(range(0, len(chunks), batch_size), desc="key covariance", disable=not progress):
            for keys, _ in reader._pairs(base, chunks[start:start + batch_size]):
                total += torch.einsum("ltd,lte->lde", keys, keys)
                count += keys.shape[1]
        if count == 0:
            raise ValueError("no keys: the texts are empty")
        cov = total / count
        ridge = RIDGE * cov.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None]
        reader.key_covariance.copy_(cov + ridge * torch.eye(cov.shape[-1]))
        reader.invalidate_fingerprint()
        return reader

    def _pairs(self, base: LoadedModel, chunks: list[Chunk]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per chunk: keys (L, P, d_in) and the ids (P,) of the token each key stores, P = :meth:`n_pairs`."""
        encoded = self.encode(base, [c.token_ids for c in chunks])
        assert encoded.acts is not None  # the config requires activation_keys
        out = []
        for i, chunk in enumerate(chunks):
            n = self.n_pairs(len(chunk.token_ids))
            out.append((encoded.acts[i, :, :n].float(), torch.tensor(chunk.token_ids[-n:], device=encoded.acts.device)))
        return out

    def n_pairs(self, n_tokens: int) -> int:
        """How many (key, next token) pairs a chunk of ``n_tokens`` stores, its memory's rank: one per token but
        the first read bare, one per token read as a chat turn (the turn opener's last token keys the first).
        """
        return n_tokens if self.config.chat_wrap else n_tokens - 1

    def _inverse_covariance(self) -> torch.Tensor:
        """``C^-1``, computed once per value of the covariance (its in-place version counter) and device."""
        key = (self.key_covariance.device, self.key_covariance._version)
        if self._precision is None or self._precision[0] != key:
            self._precision = (key, torch.linalg.inv(self.key_covariance.float()))
        return self._precision[1]

    def forward(self, states: torch.Tensor, mask: torch.Tensor, acts: torch.Tensor | None = None,
                embeddings: torch.Tensor | None = None, companion: EncodedChunks | None = None) -> LoRAAdapter:
        """Encoded chunks (:meth:`encode`, unpacked) -> a batched adapter: row i is chunk i's memory, its rank
        :meth:`n_pairs` of the longest chunk (a shorter chunk's extra ranks are zero). Differentiable in the trained
        maps (``associative_map_rank``); the closed-form solve itself has no parameters. An associative reader
        has no companion, so ``companion`` is always None.

        Raises:
            ValueError: the target modules' inputs or the token embeddings are missing.
        """
        if acts is None or embeddings is None:
            raise ValueError("the associative reader needs the target modules' inputs and the token embeddings "
                             "(DocToLoRA.encode gives both)")
        valid = (mask[:, :-1] & mask[:, 1:]).float()  # (N, T-1): a key whose next token is real
        keys = acts[:, :, :-1].float() * valid[:, None, :, None]  # (N, L, T-1, d_in)
        values = embeddings[:, 1:].float() * valid[..., None]  # (N, T-1, d_out)
        return self._memory(keys, values)

    def _memory(self, keys: torch.Tensor, values: torch.Tensor) -> LoRAAdapter:
        """Keys (..., L, T, d_in) and their values (..., T, d_out) -> the adapter of their least-squares memory
        (rank T; batched when there is a leading batch dimension). A zero key with a zero value adds nothing.
        """
        with torch.no_grad():
            kp = keys @ self._inverse_covariance()  # (..., L, T, d_in)
            gram = kp @ keys.transpose(-1, -2)  # (..., L, T, T)
            eye = torch.eye(gram.shape[-1], device=gram.device)
            a = torch.linalg.solve(self.config.associative_mu * eye + gram, kp)  # (..., L, T, d_in)
        b = self.config.associative_alpha * values.unsqueeze(-3).expand(*keys.shape[:-1], values.shape[-1])
        if self.config.associative_map_rank:
            # the query x meets the stored keys as (I + U V^T) x; the stored value e as e (I + W)
            a = a + (a @ self.query_v) @ self.query_u.transpose(-1, -2)
            b = b + b @ self.value_map
        weights = {self.config.module_name(layer): LoRAWeights(a[..., j, :, :], b[..., j, :, :].transpose(-1, -2))
                   for j, layer in enumerate(self.config.layers)}
        return LoRAAdapter(weights, 1.0, self._metadata())

    @torch.no_grad()
    def joint_memory(self, base: LoadedModel, token_ids: list[list[int]]) -> LoRAAdapter:
        """One memory of several chunks' pairs, solved together (rank: their lengths minus one each), where
        :meth:`compose` concatenates each chunk's own solve. The joint solve fits each key to its value in the
        presence of the other chunks' keys, so overlapping keys share the work instead of adding up
        (``lora-memory eval --prose --validation --composition`` compares the two).
        """
        encoded = self.encode(base, token_ids)
        assert encoded.acts is not None and encoded.embeddings is not None  # the config requires both
        counts = [self.n_pairs(len(ids)) for ids in token_ids]
        keys = torch.cat([encoded.acts[i, :, :n] for i, n in enumerate(counts)], dim=1)
        values = torch.cat([encoded.embeddings[i, 1: n + 1] for i, n in enumerate(counts)])
        return self._memory(keys.float(), values.float())

    def trim(self, adapter: LoRAAdapter, n_tokens: int) -> LoRAAdapter:
        """This reader's modules of a chunk's adapter cut to the chunk's own rank (:meth:`n_pairs`); other
        modules (a learned reader's, when this is its companion) as they are.
        """
        mine = {self.config.module_name(layer) for layer in self.config.layers}
        n = self.n_pairs(n_tokens)
        return LoRAAdapter({k: LoRAWeights(w.A[:n].contiguous(), w.B[:, :n].contiguous()) if k in mine else w
                            for k, w in adapter.weights.items()}, adapter.scaling, adapter.metadata)

    def bias_adapter(self) -> LoRAAdapter:
        """The empty memory (zero, rank 1): an associative memory has no document-independent part, so the
        trainer's document-free reference is the bare model.
        """
        assert self.config.module_d_in is not None and self.config.module_d_out is not None
        device = self.key_covariance.device
        zero_a, zero_b = torch.zeros(1, self.config.module_d_in, device=device), torch.zeros(self.config.module_d_out, 1, device=device)
        return LoRAAdapter({self.config.module_name(layer): LoRAWeights(zero_a, zero_b) for layer in self.config.layers},
                           1.0, self._metadata())

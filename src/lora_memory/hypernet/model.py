"""The Doc-to-LoRA hypernetwork: document tokens -> LoRA adapter in one forward pass.

Flow: the frozen base model encodes a chunk (wrapped as a user chat turn) up to
``config.encoder_depth`` layers only (early exit: the rest of the model is never
run); the trunk turns the token states into one vector per (layer, A|B, rank
row); the heads turn those into A and B. Chunks of a long document are encoded
in batches and their adapters concatenated along the rank axis.

Example:
    >>> base = load_base_model()  # doctest: +SKIP
    >>> hypernet = DocToLoRA.from_pretrained(DEFAULT_CHECKPOINT, base=base)  # doctest: +SKIP
    >>> adapter = hypernet.internalize(base, open("notes.txt").read())  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..adapter import LoRAAdapter, LoRAWeights, compose
from ..base import LoadedModel
from ..chunking import Chunk, chunk_text
from ..errors import IncompatibleAdapterError
from .config import HypernetConfig
from .encoding import EncodedChunks, encode_chunks, encode_for_readers
from .heads import LoRAHeads
from .pretrained import PretrainedHypernet
from .targets import decoder_layers, find_targets
from .trunks import PoolingTrunk, build_trunk


class DocToLoRA(PretrainedHypernet):
    """Generates a LoRA adapter for the base model from a document's activations."""

    config_class = HypernetConfig
    kind = "Doc-to-LoRA hypernetwork"

    def __init__(self, config: HypernetConfig):
        if config.base_hidden_size is None or config.module_d_in is None:
            raise ValueError("config is not bound to a base model; use DocToLoRA.for_base_model")
        super().__init__(config)
        self.companion: DocToLoRA | None = None
        if config.reader != "learned":
            return  # the variant's class (class_for) holds what it needs instead of a trunk and heads
        self.trunk = build_trunk(config)
        self.heads = LoRAHeads(config, self.trunk.out_dim)
        if config.companion is not None:
            self.companion = self.class_for(config.companion)(config.companion)

    @classmethod
    def class_for(cls, config: HypernetConfig) -> type[DocToLoRA]:
        """:class:`~lora_memory.hypernet.associative.AssociativeReader` for ``reader="associative"``, else ``cls``."""
        if config.reader == "associative":
            from .associative import AssociativeReader

            return AssociativeReader
        return cls

    # -------------------------------------------------------------- building
    def widen_heads(self, head_rank: int) -> DocToLoRA:
        """Widen the per-layer head maps to ``head_rank`` in place, generating the same adapters as before (see
        ``_LayerMaps.widen``); ``config.head_rank`` follows, so a saved checkpoint loads at the new width.

        Raises:
            ValueError: the maps are full rank, or ``head_rank`` is not larger than the current one.
        """
        self.heads.map_a.widen(head_rank)
        self.heads.map_b.widen(head_rank)
        self.config = self.config.model_copy(update={"head_rank": head_rank})
        return self

    def add_query_hops(self, query_hops: int) -> DocToLoRA:
        """Give the pooling trunk ``query_hops`` passes in place, generating the same adapters as before (the new
        passes start at zero, see ``PoolingTrunk.add_hops``); ``config.query_hops`` follows.

        Raises:
            ValueError: the trunk is not the pooling one, or ``query_hops`` adds no pass.
        """
        if not isinstance(self.trunk, PoolingTrunk):
            raise ValueError("query hops are a pooling-trunk option")
        self.trunk.add_hops(query_hops)
        self.config = self.config.model_copy(update={"query_hops": query_hops})
        return self

    def add_activation_keys(self) -> DocToLoRA:
        """Key each B row's slot on the target modules' own inputs too, in place (``config.activation_keys``),
        generating the same adapters as before (the heads' key gain starts at zero).

        Raises:
            ValueError: the trunk is not the pooling one, or the keys are already on.
        """
        if not isinstance(self.trunk, PoolingTrunk):
            raise ValueError("activation keys are a pooling-trunk option")
        self.heads.add_key_gain()
        self.config = self.config.model_copy(update={"activation_keys": True})
        return self

    def add_companion(self, reader: DocToLoRA) -> DocToLoRA:
        """Add ``reader`` (an associative one, on other target modules) in place: every adapter this writes gains
        ``reader``'s memory of the same chunk on ``reader``'s modules (``config.companion`` follows, and the
        weights are saved together).

        Raises:
            ValueError: this reader is not a learned one or already has a companion, ``reader`` is not
                associative, shares a target module, reads other chunks or was built for another base model.
        """
        if self.companion is not None:
            raise ValueError("this reader already has a companion")
        self.config = self.config.with_overrides(companion=reader.config)
        self.companion = reader
        self.invalidate_fingerprint()
        return self

    @classmethod
    def for_base_model(cls, base: LoadedModel, config: HypernetConfig | None = None, **overrides: Any) -> DocToLoRA:
        """A freshly initialised hypernetwork sized for ``base`` (dimensions discovered, not hard-coded).

        Raises:
            ValueError: an override is not a :class:`HypernetConfig` field, or its value is invalid.
            IncompatibleAdapterError: the target modules differ in shape across layers.
        """
        config = (config or HypernetConfig()).with_overrides(**overrides)
        model = base.model
        prefix, stack = decoder_layers(model)
        n_layers = len(stack)
        layers = config.target_layers if config.target_layers is not None else list(range(n_layers))
        if config.input_layer is not None and config.input_layer > n_layers and "input_layer" not in config.model_fields_set:
            # the default early-exit depth is sized for 30 layers; keep the same quarter-depth on smaller models
            config = config.model_copy(update={"input_layer": max(1, n_layers // 4)})
        targets = find_targets(model, config.target_module, layers)
        dims = {(t.d_in, t.d_out) for t in targets}
        if len(dims) != 1:
            raise IncompatibleAdapterError(f"target modules differ in shape across layers: {dims}")
        (d_in, d_out), = dims
        bound = HypernetConfig(**{
            **config.model_dump(),
            "target_layers": layers,
            "base_fingerprint": base.fingerprint,
            "base_name": base.name,
            "base_hidden_size": model.config.hidden_size,
            "base_num_layers": n_layers,
            "layers_prefix": prefix,
            "module_d_in": d_in,
            "module_d_out": d_out,
        })
        return cls.class_for(bound)(bound)

    # ------------------------------------------------------------- forward
    def forward(self, states: torch.Tensor, mask: torch.Tensor, acts: torch.Tensor | None = None,
                embeddings: torch.Tensor | None = None, companion: EncodedChunks | None = None) -> LoRAAdapter:
        """Token states (N, S, T, H), mask (N, T) and, with ``config.activation_keys``, the target modules'
        inputs (N, L, T, d_in) -> a batched adapter with N rows (what :meth:`encode` returns, unpacked; the
        learned reader does not read the token embeddings). With a companion, its encoding gives its part,
        and the result has scaling 1 (each part's scaling folded into its B).

        Raises:
            ValueError: this reader has a companion and ``companion`` is None.
        """
        dtype = next(self.parameters()).dtype
        z, keys = self.trunk(states.to(dtype), mask, acts)  # (N, L, 2, r, D), (N, L, r, d_in) or None
        a, b = self.heads(z, keys)  # (N, L, r, d_in), (N, L, d_out, r)
        weights = {self.config.module_name(layer): LoRAWeights(a[:, i], b[:, i])
                   for i, layer in enumerate(self.config.layers)}
        own = LoRAAdapter(weights, self.config.scaling, self._metadata())
        if self.companion is None:
            return own
        if companion is None:
            raise ValueError("this reader has a companion: pass its encoding too (DocToLoRA.encode gives it)")
        return LoRAAdapter.concat([own, self.companion(*companion)], metadata=self._metadata())  # scalings folded

    def encode(self, base: LoadedModel, token_ids: list[list[int]]) -> EncodedChunks:
        """What the hypernetwork reads (:class:`~lora_memory.hypernet.encoding.EncodedChunks`) for chunks given
        as token ids, the companion's reading included; ``self(*encoded)`` turns it into adapters.
        """
        self.check_base(base)
        if self.companion is None:
            return encode_chunks(base, token_ids, self.config)
        if self.companion.config.chat_wrap == self.config.chat_wrap:  # both read the same rows: one pass serves both
            own, theirs = encode_for_readers(base, token_ids, [self.config, self.companion.config])
        else:
            own, theirs = encode_chunks(base, token_ids, self.config), self.companion.encode(base, token_ids)
        return own._replace(companion=theirs)

    def adapters_for_chunks(self, base: LoadedModel, chunks: list[Chunk], batch_size: int = 8,
                            progress: bool = False) -> list[LoRAAdapter]:
        """One unbatched adapter per chunk, encoded ``batch_size`` chunks at a time."""
        out: list[LoRAAdapter] = []
        batches = range(0, len(chunks), batch_size)
        for start in tqdm(batches, desc="internalizing", unit="batch", disable=not progress or len(batches) < 2):
            group = chunks[start:start + batch_size]
            with torch.inference_mode():
                adapters = self._group_adapters(base, group)
            for chunk, single in zip(group, adapters, strict=True):
                single.metadata = {**single.metadata, "chunk_index": chunk.index}
                out.append(single)
        return out

    def _group_adapters(self, base: LoadedModel, group: list[Chunk]) -> list[LoRAAdapter]:
        """One unbatched adapter per chunk of one encoding batch, each cut to its chunk (:meth:`trim`)."""
        rows = self(*self.encode(base, [c.token_ids for c in group])).unbatch()
        return [self.trim(row, len(chunk.token_ids)) for chunk, row in zip(group, rows, strict=True)]

    def trim(self, adapter: LoRAAdapter, n_tokens: int) -> LoRAAdapter:
        """A chunk of ``n_tokens`` tokens' adapter without the rank its length leaves empty (a reader whose rank
        follows the chunk's length cuts its modules; the learned reader's rank is fixed, so only its companion's
        part is cut).
        """
        return adapter if self.companion is None else self.companion.trim(adapter, n_tokens)

    def internalize(self, base: LoadedModel, text: str, batch_size: int = 8, progress: bool = False) -> LoRAAdapter:
        """Turn a document into one adapter: chunk, encode, concatenate the chunks' adapters along rank.

        Raises:
            EmptyDocumentError: the text is empty.
            IncompatibleAdapterError: this hypernetwork was trained for another base model.
        """
        chunks = chunk_text(base.tokenizer, text, self.config.max_chunk_tokens)
        return self.compose(self.adapters_for_chunks(base, chunks, batch_size=batch_size, progress=progress))

    def bias_adapter(self) -> LoRAAdapter:
        """The document-independent part of every chunk's adapter: A = bias_A, B = bias_B (and the companion's,
        the empty memory).
        """
        a, b = self.heads.bias_a, self.heads.bias_b.transpose(-1, -2)  # (L, r, d_in), (L, d_out, r)
        weights = {self.config.module_name(layer): LoRAWeights(a[i], b[i]) for i, layer in enumerate(self.config.layers)}
        own = LoRAAdapter(weights, self.config.scaling, self._metadata())
        if self.companion is None:
            return own
        return LoRAAdapter.concat([own, self.companion.bias_adapter()], metadata=self._metadata())

    @property
    def companion_modules(self) -> frozenset[str]:
        """The modules the companion writes (none without a companion)."""
        if self.companion is None:
            return frozenset()
        return frozenset(self.companion.config.module_name(layer) for layer in self.companion.config.layers)

    def weighs_by_relevance(self, n_parts: int) -> bool:
        """Whether :meth:`compose` of ``n_parts`` routed chunks depends on their relevance (a companion, 2+ chunks)."""
        return self.companion is not None and n_parts > 1

    def compose(self, parts: list[LoRAAdapter], relevance: Sequence[float] | None = None) -> LoRAAdapter:
        """Chunk adapters -> the document's adapter (:func:`~lora_memory.adapter.compose`).

        With ``config.dedupe_bias`` the shared ``bias_B @ bias_A`` term is counted
        once however many chunks there are, as in a single-chunk document.

        ``relevance`` says ``parts`` are the chunks routing chose for a question, best first, with each one's
        routing relevance (:meth:`~lora_memory.routing.Ranker.relevance`). A reader with a companion then takes
        its learned part from the best chunk alone, and composes the companion's memories of all of them, each
        scaled by its relevance over the best one's: the learned parts of the other chunks cost answers and give
        none, and a memory of a chunk that holds less of the question adds less to the answer (docs/training.md,
        "The fourteenth attempt").

        Raises:
            ValueError: ``parts`` is empty, or ``relevance`` does not give one value per part.
        """
        metadata = {**self._metadata(), "n_chunks": len(parts)}
        if relevance is not None and len(relevance) != len(parts):
            raise ValueError(f"compose: {len(relevance)} relevance values for {len(parts)} chunks")
        if relevance is not None and self.weighs_by_relevance(len(parts)):
            theirs = self.companion_modules  # the companion's bias adapter is zero: no shared term to dedupe
            best = relevance[0]
            scales = [1.0 if best <= 0 else min(1.0, max(0.0, r / best)) for r in relevance]
            memories = compose([p.restrict(theirs).scaled(w) for p, w in zip(parts, scales, strict=True)],
                               metadata=metadata)
            return LoRAAdapter.concat([parts[0].restrict(theirs, keep=False), memories], metadata=metadata)
        bias = None
        if self.config.dedupe_bias:
            shared = self.bias_adapter()
            bias = LoRAAdapter({k: LoRAWeights(w.A.detach(), w.B.detach()) for k, w in shared.weights.items()},
                               shared.scaling)
        return compose(parts, bias, metadata=metadata)

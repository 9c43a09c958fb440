"""Batched multi-adapter decoding: the forward steps a continuous-batching scheduler runs.

A :class:`DecodeBatch` holds the rows that decode together, each with its own
adapter (or none). Their KV cache is one left-padded tensor per layer: a row that
joins is prefilled (joiners of the same step together), and its cache is padded
on the left to the batch's length and stacked under the others'; a row that leaves
is dropped with ``index_select`` and the columns no remaining row uses are trimmed.
Each row keeps its own position ids, so left padding never shifts its rotary
positions, and the attention mask hides the padding: every row computes what it
would compute alone (up to floating-point summation order).

The adapters of the rows are stacked into one batched adapter (``A`` of shape
(N, r, d_in), ``B`` of shape (N, d_out, r)) that :func:`lora_memory.apply.apply_adapter`
applies row by row: ranks are zero-padded to the widest, each row's scaling is
folded into its ``B``, and a row without an adapter gets zeros. A batch of one row
applies that row's adapter as it is, the same math as :func:`lora_memory.generation.generate`.

:class:`TextTracker` turns a row's tokens into text pieces (incremental decoding,
stop strings held back until they cannot begin one) and :func:`sample_next` picks
each row's next token with its own decoding settings.

Example:
    >>> batch = DecodeBatch(model)  # doctest: +SKIP
    >>> logits = batch.add([prompt_ids], [adapter])  # doctest: +SKIP
    >>> logits = batch.step(logits.argmax(-1))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from .adapter import LoRAAdapter
from .apply import apply_adapter
from .generation import GenerationConfig, _cut_at_stop

REPLACEMENT_CHAR = "\ufffd"  # what a partial UTF-8 sequence decodes to: wait for the next token


def stack_adapters(adapters: Sequence[LoRAAdapter | None]) -> LoRAAdapter | None:
    """The decode batch's adapter: a single row unchanged, None when no row has one, else
    :meth:`LoRAAdapter.stack <lora_memory.adapter.LoRAAdapter.stack>` (ranks padded, scalings folded).

    Raises:
        ValueError: two rows disagree on a module's shape.
    """
    if len(adapters) == 1 or all(a is None for a in adapters):
        return adapters[0] if len(adapters) == 1 else None
    return LoRAAdapter.stack(adapters)


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokens that end an answer: the generation config's EOS ids (what ``generate`` stops on) and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    found = set(ids) if isinstance(ids, (list, tuple)) else ({ids} if ids is not None else set())
    if tokenizer.eos_token_id is not None:
        found.add(tokenizer.eos_token_id)
    return found


class DecodeBatch:
    """Rows decoding together, in order, each with its own adapter; a left-padded KV cache shared by all.

    Not thread-safe: one scheduler thread drives it. Every forward pass runs under
    the model's adapter lock (:func:`lora_memory.apply.apply_adapter`), taken for that
    step only, so other users of the model interleave between steps.
    """

    def __init__(self, model: PreTrainedModel, pad_token_id: int | None = None):
        self.model = model
        self.pad_token_id = pad_token_id if pad_token_id is not None else 0
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (B, L) 1 = a real token
        self.positions: torch.Tensor | None = None  # (B,) position id of each row's next token
        self.adapters: list[LoRAAdapter | None] = []
        self._stacked: LoRAAdapter | None = None

    def __len__(self) -> int:
        return len(self.adapters)

    @property
    def width(self) -> int:
        """Columns of the padded KV cache."""
        return 0 if self.mask is None else self.mask.shape[1]

    def add(self, prompts: Sequence[Sequence[int]], adapters: Sequence[LoRAAdapter | None]) -> torch.Tensor:
        """Prefill new rows (appended after the current ones); returns their next-token logits (n, V) in fp32."""
        if len(prompts) != len(adapters) or not prompts:
            raise ValueError("add needs one adapter (or None) per prompt, and at least one prompt")
        device = self.model.device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's last token is in the last column
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (n, T)
        cache = DynamicCache(config=self.model.config)
        # The last column as an index tensor, not ``logits_to_keep=1``: the int slices the hidden states to a
        # non-contiguous (n, 1, d) view, which F.linear multiplies by a copy of the LM head expanded n times
        # (a (n, d, vocab) copy per prefill, most of its time); indexing gathers a contiguous (n, 1, d).
        last = torch.tensor([width - 1], device=device)
        with apply_adapter(self.model, stack_adapters(adapters)), torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                             use_cache=True, logits_to_keep=last)
        self._merge(cache, mask, positions[:, -1] + 1, list(adapters))
        return out.logits[:, -1].float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed each row its next token (B,); returns the following logits (B, V) in fp32."""
        if self.cache is None or self.mask is None or self.positions is None:
            raise RuntimeError("step on an empty batch")
        if self._stacked is None and any(a is not None for a in self.adapters):
            self._stacked = stack_adapters(self.adapters)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self), 1)], dim=1)
        with apply_adapter(self.model, self._stacked), torch.inference_mode():
            out = self.model(input_ids=tokens.view(-1, 1).to(self.mask.device), attention_mask=self.mask,
                             position_ids=self.positions.view(-1, 1), cache=self.cache, use_cache=True)
        self.positions = self.positions + 1
        return out.logits[:, -1].float()

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (indices into the current order), in that order; trims unused cache columns."""
        if len(rows) == len(self) and list(rows) == list(range(len(self))):
            return
        self._stacked = None
        self.adapters = [self.adapters[i] for i in rows]
        if not rows or self.cache is None or self.mask is None or self.positions is None:
            self.cache, self.mask, self.positions, self.adapters = None, None, None, []
            return
        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        first = int(mask.any(0).nonzero()[0])  # columns before it are padding in every remaining row
        self.mask, self.positions = mask[:, first:], self.positions.index_select(0, index)
        for layer in self._layers(self.cache):
            assert layer.keys is not None and layer.values is not None  # filled by the prefill
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]

    def _merge(self, cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor,
               adapters: list[LoRAAdapter | None]) -> None:
        self._stacked = None
        if self.cache is None or self.mask is None or self.positions is None:
            self._layers(cache)  # checks the layer types
            self.cache, self.mask, self.positions, self.adapters = cache, mask, positions, adapters
            return
        width = max(self.width, mask.shape[1])
        for old, new in zip(self._layers(self.cache), self._layers(cache)):
            assert old.keys is not None and old.values is not None and new.keys is not None and new.values is not None
            old.keys = torch.cat([_pad_left(old.keys, width, 2), _pad_left(new.keys, width, 2)], dim=0)
            old.values = torch.cat([_pad_left(old.values, width, 2), _pad_left(new.values, width, 2)], dim=0)
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(mask, width, 1)], dim=0)
        self.positions = torch.cat([self.positions, positions])
        self.adapters = self.adapters + adapters

    @staticmethod
    def _layers(cache: DynamicCache) -> list[DynamicLayer]:
        layers = list(cache.layers)
        if any(type(layer) is not DynamicLayer for layer in layers):
            kinds = sorted({type(layer).__name__ for layer in layers})
            raise NotImplementedError(f"batched decoding supports full-attention caches only, this model uses {kinds}")
        return cast(list[DynamicLayer], layers)


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zero-pad ``t`` on the left of dimension ``dim`` (1: (B, L) masks, 2: (B, H, L, D) caches) to ``width``."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [missing, 0]
    return F.pad(t, pad)


def sample_next(logits: torch.Tensor, configs: Sequence[GenerationConfig],
                generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """Each row's next token (B,): greedy where ``temperature`` is 0, else temperature and nucleus (top-p) sampling."""
    tokens = logits.argmax(-1)
    for i, config in enumerate(configs):
        if config.temperature <= 0:
            continue
        probs = torch.softmax(logits[i] / config.temperature, dim=-1)
        if config.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the more likely tokens
            sorted_probs[before > config.top_p] = 0.0  # the smallest set reaching top_p stays (at least one token)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        tokens[i] = torch.multinomial(probs, 1, generator=generators[i])[0]
    return tokens


class TextTracker:
    """A row's answer text as its tokens arrive: the new pieces to emit, and where a stop string ends it.

    The pieces join to ``tokenizer.decode(tokens, skip_special_tokens=True)`` cut before the
    first stop string, the text :func:`lora_memory.generation.generate` returns.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.tokens: list[int] = []
        self.text = ""
        self.emitted = 0
        self._hold = max((len(s) - 1 for s in self.stop), default=0)  # a tail that may begin a stop string

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; returns the text that can be emitted now and whether a stop string ended the answer."""
        self.tokens.append(token)
        text = cast(str, self.tokenizer.decode(self.tokens, skip_special_tokens=True))
        cut = _cut_at_stop(text, self.stop)
        if len(cut) < len(text):
            self.text = cut
            return self._emit(len(cut)), True
        self.text = text
        ready = len(text) - self._hold
        while ready > self.emitted and text[ready - 1] == REPLACEMENT_CHAR:
            ready -= 1
        return self._emit(ready), False

    def finish(self) -> str:
        """The text still held back, once the answer has ended."""
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        piece, self.emitted = self.text[self.emitted: upto], upto
        return piece

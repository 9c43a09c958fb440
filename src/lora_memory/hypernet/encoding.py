"""Running the frozen base model over chunks to get the token states a hypernetwork reads.

Only the layers the hypernetwork needs are run: forward pre-hooks capture the
residual stream entering each needed layer (``hidden_states[i]`` in
transformers' terms) and stop the pass after the deepest one, so the early-exit
variant (layer 8 of 30 by default) costs about a quarter of a full forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from ..base import LoadedModel
from ..padding import pad_batch
from .config import HypernetConfig
from .targets import decoder_layers

_WRAP_ATTR = "_lora_memory_chat_wrap"


class _StopForward(Exception):
    """Raised by a hook once every needed activation is captured."""


def chat_wrap_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """Token ids before and after a user message's content in the chat template."""
    cached = getattr(tokenizer, _WRAP_ATTR, None)
    if cached is None:
        marker = "\u2063LORA_MEMORY\u2063"
        text = cast(str, tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False))
        before, after = text.split(marker)
        cached = (tokenizer(before, add_special_tokens=False).input_ids,
                  tokenizer(after, add_special_tokens=False).input_ids)
        setattr(tokenizer, _WRAP_ATTR, cached)
    return cached


def encode_chunks(base: LoadedModel, token_ids: list[list[int]], config: HypernetConfig
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states (N, S, T, H) entering the needed layers, and the mask (N, T) of real tokens.

    S is 1 with ``config.input_layer`` set (early exit) and the number of target
    layers otherwise. Chunks are right-padded; padded positions never influence
    real ones (causal attention) and are masked for the hypernetwork.
    """
    prefix, suffix = chat_wrap_ids(base.tokenizer) if config.chat_wrap else ([], [])
    rows = [prefix + list(ids) + suffix for ids in token_ids]
    ids, mask = pad_batch(rows, base.tokenizer.pad_token_id or 0, mask_dtype=torch.bool)
    ids, mask = ids.to(base.device), mask.to(base.device)

    needed = [config.input_layer] if config.input_layer is not None else config.layers
    _, stack = decoder_layers(base.model)
    captured: dict[int, torch.Tensor] = {}
    deepest = max(needed)
    handles = []

    def make_hook(i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured[i] = args[0] if args else kwargs["hidden_states"]
            if i == deepest:
                raise _StopForward

        return hook

    for i in needed:
        if i < len(stack):
            handles.append(stack[i].register_forward_pre_hook(make_hook(i), with_kwargs=True))
    try:
        with torch.no_grad():
            if deepest < len(stack):
                try:
                    base.model(input_ids=ids, attention_mask=mask.long(), use_cache=False)
                except _StopForward:
                    pass
            else:  # the final layer's output: a full pass
                out = base.model(input_ids=ids, attention_mask=mask.long(), use_cache=False,
                                 output_hidden_states=True)
                captured[deepest] = out.hidden_states[deepest]
    finally:
        for h in handles:
            h.remove()
    states = torch.stack([captured[i] for i in needed], dim=1)  # (N, S, T, H)
    return states, mask

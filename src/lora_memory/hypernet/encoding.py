"""Running the frozen base model over chunks to get the token states a hypernetwork reads.

Only the layers the hypernetwork needs are run: forward pre-hooks capture the
residual stream entering each needed layer (``hidden_states[i]`` in
transformers' terms) and stop the pass after the deepest one, so the early-exit
variant (layer 8 of 30 by default) costs about a quarter of a full forward pass.
With ``activation_keys`` the target modules' own inputs are captured too, so the
pass runs into the deepest target layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

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


class EncodedChunks(NamedTuple):
    """What the hypernetwork reads from a batch of chunks.

    ``states`` (N, S, T, H): the residual stream entering the needed layers; ``mask`` (N, T): the real tokens;
    ``acts`` (N, L, T, d_in): each target module's input, only with ``config.activation_keys`` (else None);
    ``embeddings`` (N, T, H): the base model's output embedding of each token read, only for the associative
    reader (its stored values; else None); ``companion``: what a reader's companion reads from the same chunks
    (``HypernetConfig.companion``; else None).
    """

    states: torch.Tensor
    mask: torch.Tensor
    acts: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    companion: EncodedChunks | None = None


def encode_chunks(base: LoadedModel, token_ids: list[list[int]], config: HypernetConfig) -> EncodedChunks:
    """Run the frozen base model over chunks only as far as the hypernetwork needs.

    S is 1 with ``config.input_layer`` set (early exit) and the number of target
    layers otherwise. Chunks are right-padded; padded positions never influence
    real ones (causal attention) and are masked for the hypernetwork. The pass
    stops once every needed activation is captured.
    """
    return encode_for_readers(base, token_ids, [config])[0]


def encode_for_readers(base: LoadedModel, token_ids: list[list[int]],
                       configs: list[HypernetConfig]) -> list[EncodedChunks]:
    """What each of several readers reads from the same chunks (:func:`encode_chunks` for each), from one pass of
    the base model as deep as the deepest of them needs: a learned reader and a companion that both read the
    chunk as a chat turn share it.

    Raises:
        ValueError: the readers read the chunk differently (``chat_wrap``), so no pass serves them all.
    """
    if len({c.chat_wrap for c in configs}) != 1:
        raise ValueError("one pass serves readers that all wrap the chunk, or all read it bare")
    prefix, suffix = chat_wrap_ids(base.tokenizer) if configs[0].chat_wrap else ([], [])
    rows = [prefix + list(ids) + suffix for ids in token_ids]
    ids, mask = pad_batch(rows, base.tokenizer.pad_token_id or 0, mask_dtype=torch.bool)
    ids, mask = ids.to(base.device), mask.to(base.device)

    _, stack = decoder_layers(base.model)
    needed = {i for c in configs for i in ([c.input_layer] if c.input_layer is not None else c.layers)}
    act_sites = {(c.target_module, i) for c in configs if c.activation_keys for i in c.layers}
    full_pass = max(needed) >= len(stack)  # the final layer's output is not any layer's input
    captured: dict[int, torch.Tensor] = {}
    acts: dict[tuple[str, int], torch.Tensor] = {}
    n_hooked = sum(i < len(stack) for i in needed) + len(act_sites)
    handles = []

    def make_hook(store: dict[Any, torch.Tensor], key: Any) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            store[key] = args[0] if args else kwargs["hidden_states"]
            if not full_pass and len(captured) + len(acts) == n_hooked:
                raise _StopForward

        return hook

    for i in needed:
        if i < len(stack):
            handles.append(stack[i].register_forward_pre_hook(make_hook(captured, i), with_kwargs=True))
    for name, i in act_sites:
        module = stack[i].get_submodule(name)
        handles.append(module.register_forward_pre_hook(make_hook(acts, (name, i)), with_kwargs=True))
    try:
        with torch.no_grad():
            try:
                out = base.model(input_ids=ids, attention_mask=mask.long(), use_cache=False,
                                 output_hidden_states=full_pass)
            except _StopForward:
                pass
            else:
                for i in needed:
                    if i >= len(stack):
                        captured[i] = out.hidden_states[i]
    finally:
        for h in handles:
            h.remove()
    return [_reading(base, token_ids, c, ids, mask, captured, acts, len(prefix)) for c in configs]


def _reading(base: LoadedModel, token_ids: list[list[int]], config: HypernetConfig, ids: torch.Tensor,
             mask: torch.Tensor, captured: dict[int, torch.Tensor], acts: dict[tuple[str, int], torch.Tensor],
             n_prefix: int) -> EncodedChunks:
    """One reader's :class:`EncodedChunks` out of a pass's captured activations."""
    needed = [config.input_layer] if config.input_layer is not None else config.layers
    states = torch.stack([captured[i] for i in needed], dim=1)  # (N, S, T, H)
    keys = (torch.stack([acts[(config.target_module, i)] for i in config.layers], dim=1)
            if config.activation_keys else None)
    if config.reader != "associative":
        return EncodedChunks(states, mask, keys)
    embeddings = base.model.get_output_embeddings().weight[ids]
    if config.chat_wrap:  # an associative reader keeps the chunk's window only: the turn opener's last token, then the chunk
        if not n_prefix:
            raise ValueError("this tokenizer's chat template puts nothing before a user message: use chat_wrap=false")
        start, width = n_prefix - 1, max(len(t) for t in token_ids) + 1
        window = slice(start, start + width)
        lengths = torch.tensor([len(t) for t in token_ids], device=ids.device)
        mask = torch.arange(width, device=ids.device)[None, :] <= lengths[:, None]
        states, embeddings = states[:, :, window], embeddings[:, window]
        keys = keys[:, :, window] if keys is not None else None
    return EncodedChunks(states, mask, keys, embeddings)

"""Greedy answers for the evaluations: one prompt at a time, or several decoded together.

Every evaluation answers with greedy decoding and a short budget of new tokens; these
two helpers are the one place that does it, with or without an adapter per prompt.
"""

from __future__ import annotations

from typing import cast

import torch

from ..adapter import LoRAAdapter
from ..base import LoadedModel
from ..decoding import DecodeBatch, eos_token_ids
from ..generation import GenerationConfig, encode_chat, generate


def greedy_answer(base: LoadedModel, prompt: str, adapter: LoRAAdapter | None, max_new_tokens: int) -> str:
    """The greedy reply to ``prompt`` (a user turn) with ``adapter`` applied, if any."""
    return generate(base.model, base.tokenizer, prompt, adapter=adapter,
                    config=GenerationConfig(max_new_tokens=max_new_tokens)).text


@torch.no_grad()
def greedy_answers(base: LoadedModel, prompts: list[str], adapters: list[LoRAAdapter | None], max_new_tokens: int
                   ) -> list[str]:
    """Greedy replies to several prompts decoded together, each row with its own adapter (or none).

    The same tokens :func:`greedy_answer` picks for each row alone (up to floating-point
    summation order) when the prompts have one length; left padding of unequal prompts
    changes bf16 greedy decodes, so callers batch only prompts of equal length.
    """
    tok = base.tokenizer
    batch = DecodeBatch(base.model, tok.pad_token_id)
    logits = batch.add([encode_chat(tok, p)[0].tolist() for p in prompts], adapters)
    eos = eos_token_ids(base.model, tok)
    tokens: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for _ in range(max_new_tokens):
        chosen = logits.argmax(-1)
        for i, t in enumerate(chosen.tolist()):
            if not done[i]:
                done[i] = t in eos
                if not done[i]:
                    tokens[i].append(t)
        if all(done):
            break
        logits = batch.step(chosen)
    return [cast(str, tok.decode(t, skip_special_tokens=True)) for t in tokens]

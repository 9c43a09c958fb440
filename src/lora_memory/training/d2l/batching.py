"""Turning D2L examples into tensors: chunk batches for the hypernetwork, question batches for the student."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from ...adapter import LoRAAdapter, LoRAWeights
from ...chunking import chunk_text
from ..batching import StudentBatch, answer_ids, student_batch
from .data import Example

def chunk_examples(tokenizer: PreTrainedTokenizerBase, examples: list[Example], max_tokens: int
                   ) -> tuple[list[list[int]], list[list[int]]]:
    """Every example's chunks as token ids, and for each example the indices of its chunks.

    An example whose ``info["parts"]`` lists separate texts (an article and its distractors) gets
    each part chunked on its own, as the memory chunks separate documents.
    """
    token_ids, groups = [], []
    for ex in examples:
        parts = ex.info.get("parts") or [ex.document]
        chunks = [c for part in parts for c in chunk_text(tokenizer, part, max_tokens)]
        groups.append(list(range(len(token_ids), len(token_ids) + len(chunks))))
        token_ids.extend(c.token_ids for c in chunks)
    return token_ids, groups


def compose_rows(adapter: LoRAAdapter, groups: list[list[int]], bias: LoRAAdapter | None = None) -> LoRAAdapter:
    """Per-chunk batched adapter -> per-example batched adapter (chunks concatenated along rank).

    Examples with fewer chunks are padded with zero rank rows, which add nothing.
    With ``bias`` (the hypernetwork's :meth:`~DocToLoRA.bias_adapter`), an example
    of K chunks also gets the bias rows with weight ``-(K - 1)``, exactly as
    :meth:`DocToLoRA.compose` does at inference.
    """
    if all(len(g) == 1 for g in groups):
        idx = torch.tensor([g[0] for g in groups])
        return adapter.select(idx)
    k = max(len(g) for g in groups)
    factors = torch.tensor([-(len(g) - 1.0) for g in groups])  # (N,)
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
            b = torch.cat([b, factors.to(b)[:, None, None] * bw.B], dim=2)
        out[name] = LoRAWeights(a, b)
    return LoRAAdapter(out, adapter.scaling, dict(adapter.metadata))


def qa_batch(tokenizer: PreTrainedTokenizerBase, examples: list[Example], questions_per_example: int | None = None,
             keep: bool = False) -> StudentBatch:
    """One student row per (example, question) with the true answer as the target.

    With ``keep`` the rows are the examples' ``info["keep"]`` questions (about other documents) instead.
    """
    prompts, answers, owner = [], [], []
    for i, ex in enumerate(examples):
        for qa in (ex.info.get("keep", []) if keep else ex.qa[:questions_per_example]):
            prompts.append(qa.question)
            answers.append(answer_ids(tokenizer, qa.answer))
            owner.append(i)
    return student_batch(tokenizer, prompts, answers, owner)

"""Turning D2L examples into tensors: chunk batches for the hypernetwork, question batches for the student."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ...chunking import chunk_text
from ...evaluation.prompts import in_context_prompt
from ..batching import StudentBatch, answer_ids, student_batch
from .data import Example


def chunk_examples(tokenizer: PreTrainedTokenizerBase, examples: list[Example], max_tokens: int
                   ) -> tuple[list[list[int]], list[list[int]]]:
    """Every example's chunks as token ids, and for each example the indices of its chunks.

    An example whose ``info["parts"]`` lists separate texts (an article and its distractors) gets
    each part chunked on its own, as the memory chunks separate documents.
    """
    token_ids: list[list[int]] = []
    groups: list[list[int]] = []
    for ex in examples:
        parts = ex.info.get("parts") or [ex.document]
        chunks = [c for part in parts for c in chunk_text(tokenizer, part, max_tokens)]
        groups.append(list(range(len(token_ids), len(token_ids) + len(chunks))))
        token_ids.extend(c.token_ids for c in chunks)
    return token_ids, groups


def qa_batch(tokenizer: PreTrainedTokenizerBase, examples: list[Example], questions_per_example: int | None = None,
             keep: bool = False, in_context: bool = False) -> StudentBatch:
    """One student row per (example, question) with the true answer as the target.

    With ``keep`` the rows are the examples' ``info["keep"]`` questions (about other documents) instead. With
    ``in_context`` each prompt holds its example's document before the question (the in-context teacher's rows:
    the same answers at the same labelled positions, in the same order).
    """
    prompts, answers, owner = [], [], []
    for i, ex in enumerate(examples):
        for qa in (ex.info.get("keep", []) if keep else ex.qa[:questions_per_example]):
            prompts.append(in_context_prompt(ex.document, qa.question) if in_context else qa.question)
            answers.append(answer_ids(tokenizer, qa.answer))
            owner.append(i)
    return student_batch(tokenizer, prompts, answers, owner)

"""Student batches for the base model: question-only prompts followed by answers, loss on the answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ..generation import encode_chat
from ..padding import pad_batch


@dataclass
class StudentBatch:
    """Question-only prompts followed by answers; ``labels`` is -100 outside the answers."""

    input_ids: torch.Tensor  # (M, T)
    attention_mask: torch.Tensor  # (M, T)
    labels: torch.Tensor  # (M, T)
    row_example: torch.Tensor  # (M,) which example (adapter row) each row belongs to


def student_batch(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[list[dict[str, str]] | str],
                  answers: list[list[int]], row_example: list[int]) -> StudentBatch:
    """Right-padded batch of ``chat(prompt) + answer`` with loss on the answer tokens only."""
    rows, labels = [], []
    for prompt, answer in zip(prompts, answers):
        p = encode_chat(tokenizer, prompt)[0].tolist()
        rows.append(p + answer)
        labels.append([-100] * len(p) + answer)
    ids, mask = pad_batch(rows, tokenizer.pad_token_id or 0)
    lab, _ = pad_batch(labels, -100)
    return StudentBatch(ids, mask, lab, torch.tensor(row_example))


def answer_ids(tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
    """The answer's tokens followed by end-of-turn, which the student must also learn to emit."""
    return tokenizer(answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]

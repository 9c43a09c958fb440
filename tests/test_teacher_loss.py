"""Context distillation on the true answer: the in-context teacher's rows and its KL term (a run: test_prose)."""

from __future__ import annotations

import random

import pytest
import torch

from lora_memory.evaluation.prompts import in_context_prompt
from lora_memory.training.d2l.batching import qa_batch
from lora_memory.training.d2l.prose import prose_example
from lora_memory.training.objectives import _target_logits, answer_loss, teacher_loss


@pytest.fixture
def examples():
    rng = random.Random(7)
    return [prose_example(rng, "train", p_single=1.0, keep=0) for _ in range(2)]


def test_the_teacher_rows_hold_the_document_and_label_the_same_answer_tokens(tiny_llama, examples):
    student = qa_batch(tiny_llama.tokenizer, examples)
    teacher = qa_batch(tiny_llama.tokenizer, examples, in_context=True)
    assert teacher.row_example.tolist() == student.row_example.tolist()
    for s_row, t_row in zip(student.labels, teacher.labels, strict=True):
        assert s_row[s_row != -100].tolist() == t_row[t_row != -100].tolist()
    first = tiny_llama.tokenizer.decode(teacher.input_ids[0][teacher.attention_mask[0].bool()])
    assert in_context_prompt(examples[0].document, examples[0].qa[0].question) in first
    assert examples[0].document not in tiny_llama.tokenizer.decode(student.input_ids[0])


def test_teacher_loss_is_zero_against_itself_and_the_kl_to_the_in_context_teacher(tiny_llama, make_trainable_rows,
                                                                                   examples):
    tok, model = tiny_llama.tokenizer, tiny_llama.model
    student = qa_batch(tok, examples)
    bare = answer_loss(model, student, None)
    assert teacher_loss(model, bare, student).item() == pytest.approx(0.0, abs=1e-5)  # the bare model is its own teacher

    _, adapter = make_trainable_rows(tiny_llama.model)
    out = answer_loss(model, student, adapter)
    teacher = qa_batch(tok, examples, in_context=True)
    kl = teacher_loss(model, out, teacher)
    t_logits, _, rows = _target_logits(model, teacher, None)
    p = torch.softmax(t_logits, -1)
    per_position = (p * (torch.log_softmax(t_logits, -1) - torch.log_softmax(out.logits.detach(), -1))).sum(-1)
    per_row = torch.stack([per_position[rows == r].mean() for r in range(student.input_ids.shape[0])])
    torch.testing.assert_close(kl.detach(), per_row.mean(), atol=1e-4, rtol=1e-4)
    assert kl.item() > 0
    kl.backward()  # the gradient reaches the adapter, never the frozen teacher
    assert all(w.B.grad is not None and w.B.grad.abs().sum() > 0 for w in adapter.weights.values())


def test_teacher_loss_refuses_answers_that_differ(tiny_llama, examples):
    tok, model = tiny_llama.tokenizer, tiny_llama.model
    out = answer_loss(model, qa_batch(tok, examples), None)
    with pytest.raises(ValueError, match="same tokens"):
        teacher_loss(model, out, qa_batch(tok, examples[:1], in_context=True))

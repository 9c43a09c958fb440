"""Losses for training a hypernetwork through the frozen base model.

- :func:`answer_loss`: cross-entropy of the student (base model + generated
  adapter, no document in the prompt) on known answer tokens. For synthetic data
  the true answers are known, so the student can be trained on them directly.
- :func:`distill_loss`: context distillation: match the in-context teacher's
  top-k distribution on the teacher's own response tokens (D2L's objective).
- :func:`keep_loss`: do no harm: on questions the document does not answer, the
  KL divergence from the bare model's distribution to the student's.
- :func:`teacher_loss`: context distillation on the true answer: at each of its
  tokens, the KL divergence from the in-context teacher's full distribution (the
  bare model with the document in its prompt, fed the same answer) to the
  student's; richer per question than the answer's one token, and no generation.
- :func:`contrast_loss`: read the document: a hinge that asks each question's answer loss under its
  own document's adapter to sit a margin below a reference: its loss under another document's adapter
  (which cancels what every adapter shares, such as the answer format) or under the document-free
  bias adapter (which cannot be met by making other documents' adapters worse).
- :func:`l1_penalty`: the L1 penalty on generated A and B.
- :func:`delta_norm`: the squared size of a batched adapter's document part on some modules (its
  delta beyond a shared reference such as the bias), to hold a reader quiet on some families.

Only positions with a target are projected to the vocabulary, which saves most
of the language-model head's cost on prompt tokens.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from ..adapter import LoRAAdapter
from ..apply import apply_adapter
from .batching import StudentBatch


@dataclass
class LossOutput:
    loss: torch.Tensor
    token_accuracy: float
    exact: float  # fraction of rows whose every target token is the argmax
    row_losses: torch.Tensor  # (M,) each row's mean loss over its target positions
    logits: torch.Tensor | None = None  # (P, V) the student's logits at the target positions (answer_loss)
    rows: torch.Tensor | None = None  # (P,) each target position's row (answer_loss)


def _target_logits(model: PreTrainedModel, batch: StudentBatch, adapter: LoRAAdapter | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (P, V) at positions that predict a target token, the targets (P,), and each position's row (P,)."""
    device = next(model.parameters()).device
    ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
    targets = batch.labels[:, 1:].to(device)
    sel = targets != -100  # (M, T-1): position t predicts token t+1
    rows_adapter = adapter.select(batch.row_example.to(device)) if adapter is not None else None
    with apply_adapter(model, rows_adapter):
        hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    logits = model.get_output_embeddings()(hidden[:, :-1][sel]).float()  # (P, V)
    rows = torch.arange(ids.shape[0], device=device)[:, None].expand_as(sel)[sel]
    return logits, targets[sel], rows


def _row_values(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Mean over positions within each row: (n_rows,)."""
    sums = torch.zeros(n_rows, device=values.device, dtype=values.dtype).index_add(0, rows, values)
    counts = torch.zeros(n_rows, device=values.device).index_add(0, rows, torch.ones_like(values))
    return sums / counts.clamp(min=1)


def _row_mean(values: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Mean over positions within each row, then over rows (long answers don't dominate)."""
    return _row_values(values, rows, n_rows).mean()


def _accuracy(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int) -> tuple[float, float]:
    correct = (logits.argmax(-1) == targets).float()
    wrong_per_row = torch.zeros(n_rows, device=logits.device).index_add(0, rows, 1 - correct)
    return correct.mean().item(), (wrong_per_row == 0).float().mean().item()


def token_losses(model: PreTrainedModel, batch: StudentBatch, adapter: LoRAAdapter | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy at every target position (P,), in batch order, and each position's row (P,)."""
    logits, targets, rows = _target_logits(model, batch, adapter)
    return F.cross_entropy(logits, targets, reduction="none"), rows


def answer_loss(model: PreTrainedModel, batch: StudentBatch, adapter: LoRAAdapter | None) -> LossOutput:
    """Cross-entropy on the answer tokens, averaged per row then over rows."""
    logits, targets, rows = _target_logits(model, batch, adapter)
    n = batch.input_ids.shape[0]
    per_row = _row_values(F.cross_entropy(logits, targets, reduction="none"), rows, n)
    return LossOutput(per_row.mean(), *_accuracy(logits, targets, rows, n), per_row, logits, rows)


def distill_loss(model: PreTrainedModel, batch: StudentBatch, adapter: LoRAAdapter | None,
                 teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor) -> LossOutput:
    """Cross-entropy against the teacher's renormalised top-k distribution at each response position.

    Args:
        model: the frozen base model (the student).
        batch: student rows whose labels are the teacher's response tokens.
        adapter: the batched adapter applied to the student (None: the bare model).
        teacher_ids: (P, k) the teacher's top-k token ids at each labelled position, in batch order.
        teacher_logprobs: (P, k) their log-probabilities.
    """
    logits, targets, rows = _target_logits(model, batch, adapter)
    p_teacher = torch.softmax(teacher_logprobs.to(logits.device).float(), dim=-1)  # renormalise the top-k
    logp_student = torch.log_softmax(logits, dim=-1).gather(-1, teacher_ids.to(logits.device))
    n = batch.input_ids.shape[0]
    per_row = _row_values(-(p_teacher * logp_student).sum(-1), rows, n)
    return LossOutput(per_row.mean(), *_accuracy(logits, targets, rows, n), per_row)


def _kl_from(logp_target: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """KL(target || student) over the full vocabulary at each position, averaged per row then over rows."""
    kl = (logp_target.exp() * (logp_target - torch.log_softmax(logits, dim=-1))).sum(-1)  # (P,)
    return _row_mean(kl, rows, n_rows)


def keep_loss(model: PreTrainedModel, batch: StudentBatch, adapter: LoRAAdapter) -> torch.Tensor:
    """KL(bare || student) over the full vocabulary at every labelled position, averaged per row then over rows.

    The labels only choose the positions (an unrelated question's answer); the target is what the
    model without any adapter predicts there, so a document's adapter learns to leave it unchanged.
    """
    with torch.no_grad():
        bare, _, _ = _target_logits(model, batch, None)
    logits, _, rows = _target_logits(model, batch, adapter)
    return _kl_from(torch.log_softmax(bare, dim=-1), logits, rows, batch.input_ids.shape[0])


def teacher_loss(model: PreTrainedModel, student: LossOutput, teacher_batch: StudentBatch) -> torch.Tensor:
    """KL(in-context teacher || student) at every token of the true answers.

    Args:
        model: the frozen base model; without an adapter and with the document in its prompt it is the teacher.
        student: :func:`answer_loss`'s output (its logits and rows) on the question-only batch.
        teacher_batch: the same questions and answers, each prompt with its document before the question, so its
            labelled positions are the student's, in the same order.
    """
    assert student.logits is not None and student.rows is not None, "teacher_loss needs answer_loss's output"
    with torch.no_grad():
        teacher, _, _ = _target_logits(model, teacher_batch, None)
    if teacher.shape != student.logits.shape:
        raise ValueError(f"teacher and student label {teacher.shape[0]} and {student.logits.shape[0]} positions: "
                         "their answers must be the same tokens")
    return _kl_from(torch.log_softmax(teacher, dim=-1), student.logits, student.rows, student.row_losses.shape[0])


def swapped_rows(batch: StudentBatch, partner: torch.Tensor) -> tuple[StudentBatch, torch.Tensor]:
    """The rows of ``batch`` whose example has a partner (``partner[e] >= 0``), asked with the partner's adapter
    row instead of their own; and which rows of ``batch`` those are.
    """
    keep = partner[batch.row_example] >= 0
    index = keep.nonzero().squeeze(-1)
    swapped = StudentBatch(batch.input_ids[index], batch.attention_mask[index], batch.labels[index],
                           partner[batch.row_example[index]])
    return swapped, index


ContrastReference = Literal["partner", "fixed_partner", "bias"]


class ContrastOutput(NamedTuple):
    hinge: torch.Tensor  # the term to add to the loss (scalar)
    gap: torch.Tensor  # (N,) detached: each swapped row's loss under the partner's adapter minus under its own
    bias_gap: torch.Tensor  # (N,) detached: loss under the document-free bias adapter minus own (reference "bias")


def contrast_loss(model: PreTrainedModel, batch: StudentBatch, adapter: LoRAAdapter, own: torch.Tensor,
                  partner: torch.Tensor, margin: float, reference: ContrastReference = "partner",
                  bias: LoRAAdapter | None = None) -> ContrastOutput:
    """The read-the-document hinge, and the gaps it is made of.

    Args:
        model: the frozen base model.
        batch: the student rows, each with its own example's adapter row (``row_example``).
        adapter: the batched adapter, one row per example.
        own: (M,) each row's answer loss under its own adapter (:attr:`LossOutput.row_losses`).
        partner: (N,) for each example, the example whose adapter its questions are also asked with
            (another document), or -1 for none.
        margin: nats by which the own adapter's loss should be lower than the reference's.
        reference: what the own loss is held below, over the rows that have a partner:

            - ``"partner"``: ``relu(margin - (other - own))`` with gradients through both losses, which
              cancels what the two adapters share; it can also be met by making ``other`` worse (harm).
            - ``"fixed_partner"``: the same hinge with ``other`` a constant, so only ``own`` moves.
            - ``"bias"``: ``relu(margin - (ref - own)) + relu(other - ref)`` with ``ref`` the (constant)
              loss under the document-free ``bias`` adapter: own must read its text, and another text's
              adapter must do no worse than none. Neither term is met by harm.
        bias: the unbatched document-free adapter (:meth:`DocToLoRA.bias_adapter`), for ``"bias"``.

    Returns:
        The hinge (0 when no row has a partner) and the detached gaps.
    """
    if reference == "bias" and bias is None:
        raise ValueError("contrast reference 'bias' needs the bias adapter")
    swapped, index = swapped_rows(batch, partner)
    empty = own.new_zeros(0)
    if index.numel() == 0:
        return ContrastOutput(own.sum() * 0, empty, empty)
    own_rows = own[index.to(own.device)]
    with torch.set_grad_enabled(torch.is_grad_enabled() and reference != "fixed_partner"):
        other = answer_loss(model, swapped, adapter).row_losses
    gap = other - own_rows
    if reference != "bias":
        return ContrastOutput(torch.relu(margin - gap).mean(), gap.detach(), empty)
    assert bias is not None  # checked on entry
    alone = StudentBatch(swapped.input_ids, swapped.attention_mask, swapped.labels,
                         torch.zeros_like(swapped.row_example))
    with torch.no_grad():
        ref = answer_loss(model, alone, bias.as_batch()).row_losses
    hinge = (torch.relu(margin - (ref - own_rows)) + torch.relu(other - ref)).mean()
    return ContrastOutput(hinge, gap.detach(), (ref - own_rows).detach())


def delta_norm(adapter: LoRAAdapter, modules: Collection[str], reference: LoRAAdapter | None = None) -> torch.Tensor:
    """Per row of a batched adapter: the squared Frobenius norm of its delta ``scaling * B @ A`` minus the
    (unbatched) ``reference``'s delta, summed over ``modules``; shape (N,).

    Computed from the factors, ``||B' A'||^2 = sum((B'^T B') * (A' A'^T))`` with the reference's factors
    appended (its B negated), so the dense (d_out, d_in) delta is never formed.
    """
    total = None
    for name in modules:
        w = adapter.weights[name]
        a, b = w.A, adapter.scaling * w.B  # (N, r, d_in), (N, d_out, r)
        if reference is not None:
            ref = reference.weights[name]
            n = a.shape[0]
            a = torch.cat([a, ref.A.to(a.dtype).expand(n, -1, -1)], dim=1)
            b = torch.cat([b, -reference.scaling * ref.B.to(b.dtype).expand(n, -1, -1)], dim=2)
        a, b = a.float(), b.float()
        term = ((b.transpose(1, 2) @ b) * (a @ a.transpose(1, 2))).sum((1, 2))
        total = term if total is None else total + term
    if total is None:
        raise ValueError("delta_norm needs at least one module")
    return total


def l1_penalty(adapter: LoRAAdapter) -> torch.Tensor:
    """Mean absolute value of every generated A and B entry."""
    terms = [w.A.abs().mean() + w.B.abs().mean() for w in adapter.weights.values()]
    return torch.stack(terms).mean()

"""The hypernetwork training loop: small named functions, nanoGPT style.

One step: draw documents for the current curriculum stage (a pure function of
seed and step), chunk them, encode the chunks with the frozen base model (no
gradient), generate per-chunk adapters, concatenate each document's chunks
along rank, and train the hypernetwork through the frozen base model on the
answers (or on the in-context teacher's distribution). Checkpoints hold
everything needed to resume exactly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from ...adapter import LoRAAdapter, compose_rows
from ...base import LoadedModel, load_base_model
from ...hypernet import DocToLoRA, HypernetConfig
from ..checkpoint import read_state, restore_optimizer, save_checkpoint
from ..diagnostics import adapter_spread
from ..objectives import (
    LossOutput,
    answer_loss,
    contrast_loss,
    delta_norm,
    distill_loss,
    keep_loss,
    l1_penalty,
    teacher_loss,
)
from .batching import chunk_examples, qa_batch
from .config import Stage, TrainConfig
from .data import Example, Split, make_example
from .teacher import Teacher

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
FINAL_DIR = "hypernet"
LOG_NAME = "log.jsonl"


class LRSchedule(Protocol):
    """What :func:`get_lr` reads from a training config (the D2L and the T2L ones both have it)."""

    @property
    def lr(self) -> float: ...
    @property
    def warmup_steps(self) -> int: ...
    @property
    def total_steps(self) -> int: ...
    @property
    def min_lr_ratio(self) -> float: ...


def get_lr(config: LRSchedule, step: int) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr`` over all stages."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.total_steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def param_groups(hypernet: DocToLoRA, config: TrainConfig) -> list[dict[str, Any]]:
    """One group per ``lr_multipliers`` prefix (first match wins), plus the rest at multiplier 1."""
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in hypernet.named_parameters():
        mult = next((m for prefix, m in config.lr_multipliers.items() if name.startswith(prefix)), 1.0)
        groups.setdefault(mult, []).append(p)
    return [{"params": ps, "lr_mult": m, "lr": config.lr * m} for m, ps in sorted(groups.items())]


def sample_examples(stage: Stage, seed: int, step: int, split: Split, n: int, worker: int = 0) -> list[Example]:
    """Draw ``n`` examples from the stage's mix; deterministic in (seed, step, split, worker)."""
    rng = random.Random(f"{seed}:{step}:{split}:{worker}")
    weights = [t.weight for t in stage.tasks]
    out = []
    for _ in range(n):
        task = rng.choices(stage.tasks, weights)[0]
        out.append(make_example(rng, task.kind, split, **task.params))
    return out


def generate_adapters(hypernet: DocToLoRA, base: LoadedModel, examples: list[Example],
                      forward: torch.nn.Module | None = None) -> LoRAAdapter:
    """Per-example batched adapter (chunks composed along rank), with gradients to the hypernetwork.

    ``forward`` is the module to call (a distributed wrapper of ``hypernet`` under accelerate).
    """
    token_ids, groups = chunk_examples(base.tokenizer, examples, hypernet.config.max_chunk_tokens)
    encoded = hypernet.encode(base, token_ids)
    bias = hypernet.bias_adapter() if hypernet.config.dedupe_bias else None
    return compose_rows((forward or hypernet)(*encoded), groups, bias)


def partners(examples: list[Example], kinds: Collection[str]) -> torch.Tensor:
    """For each example, another example of a family in ``kinds`` about a different document (the next one
    in the batch, cyclically), or -1: whose adapter its questions are also asked with by the hinge.
    """
    source = [ex.info.get("title", ex.document) for ex in examples]
    partner = [-1] * len(examples)
    pool = [i for i, ex in enumerate(examples) if ex.kind in kinds]
    for j, i in enumerate(pool):
        partner[i] = next((other for other in pool[j + 1:] + pool[:j] if source[other] != source[i]), -1)
    return torch.tensor(partner, dtype=torch.long)


def compute_loss(hypernet: DocToLoRA, base: LoadedModel, examples: list[Example], config: TrainConfig,
                 teacher: Teacher | None, forward: torch.nn.Module | None = None
                 ) -> tuple[torch.Tensor, LossOutput, dict[str, float]]:
    """The step's loss, the main objective's output, and the extra terms' values for the log."""
    adapter = generate_adapters(hypernet, base, examples, forward)
    extra: dict[str, float] = {}
    if config.objective == "distill":
        assert teacher is not None, "the distill objective needs a teacher"
        batch, ids, logprobs = teacher.student_batch(examples)
        out = distill_loss(base.model, batch, adapter, ids, logprobs)
    else:
        batch = qa_batch(base.tokenizer, examples)
        out = answer_loss(base.model, batch, adapter)
    loss = out.loss + config.l1_weight * l1_penalty(adapter) if config.l1_weight else out.loss
    if config.keep_weight and any(ex.info.get("keep") for ex in examples):
        loss = loss + config.keep_weight * keep_loss(base.model, qa_batch(base.tokenizer, examples, keep=True), adapter)
    if config.quiet_weight:
        rows = torch.tensor([i for i, ex in enumerate(examples) if ex.kind in config.quiet_kinds], dtype=torch.long)
        if rows.numel():
            own = [hypernet.config.module_name(layer) for layer in hypernet.config.layers]
            reference = hypernet.bias_adapter() if hypernet.config.dedupe_bias else None
            quiet = delta_norm(adapter.select(rows), own, reference).mean()
            loss = loss + config.quiet_weight * quiet
            extra["quiet_norm"] = quiet.item()
    if config.teacher_weight:
        kl = teacher_loss(base.model, out, qa_batch(base.tokenizer, examples, in_context=True))
        loss = loss + config.teacher_weight * kl
        extra["teacher_kl"] = kl.item()
    if config.contrast_weight:
        bias = hypernet.bias_adapter() if config.contrast_reference == "bias" else None
        hinge, gap, bias_gap = contrast_loss(base.model, batch, adapter, out.row_losses,
                                             partners(examples, config.contrast_kinds), config.contrast_margin,
                                             config.contrast_reference, bias)
        loss = loss + config.contrast_weight * hinge
        if gap.numel():
            extra.update(contrast_hinge=hinge.item(), own_text_gap=gap.mean().item())
        if bias_gap.numel():
            extra["bias_gap"] = bias_gap.mean().item()
    return loss, out, extra


@torch.no_grad()
def evaluate(hypernet: DocToLoRA, base: LoadedModel, config: TrainConfig, step: int) -> dict[str, float]:
    """Held-out answer loss, teacher-forced exact match (overall and per task family, ``eval_exact_<kind>``, so a
    mix's families can be told apart), the own-text gap per family (``eval_gap_<kind>``: a question's answer
    loss under another document's adapter minus under its own, in nats; ``eval_bias_gap_<kind>``: under the
    document-free bias adapter minus under its own), and the collapse diagnostics.
    """
    hypernet.eval()
    stage = config.stage_at(step)
    examples = sample_examples(stage, config.seed, 0, "heldout", config.eval_examples)
    losses, exact, acc, sizes, kinds = [], [], [], [], []
    adapters = []
    gaps: dict[str, list[float]] = {}
    bias = hypernet.bias_adapter()
    for kind in dict.fromkeys(ex.kind for ex in examples):
        of_kind = [ex for ex in examples if ex.kind == kind]
        for i in range(0, len(of_kind), stage.batch_size):
            group = of_kind[i:i + stage.batch_size]
            adapter = generate_adapters(hypernet, base, group)
            batch = qa_batch(base.tokenizer, group)
            out = answer_loss(base.model, batch, adapter)
            _, gap, bias_gap = contrast_loss(base.model, batch, adapter, out.row_losses, partners(group, {kind}),
                                             config.contrast_margin, "bias", bias)
            if gap.numel():
                gaps.setdefault(f"eval_gap_{kind}", []).extend(gap.tolist())
                gaps.setdefault(f"eval_bias_gap_{kind}", []).extend(bias_gap.tolist())
            losses.append(out.loss.item())
            exact.append(out.exact)
            acc.append(out.token_accuracy)
            sizes.append(len(group))
            kinds.append(kind)
            adapters.append(adapter)
    hypernet.train()
    spread = adapter_spread(adapters)

    def mean(values: list[float], kind: str | None = None) -> float:
        """Example-weighted mean over the groups (of one family when ``kind`` is given)."""
        pairs = [(v, n) for v, n, k in zip(values, sizes, kinds, strict=True) if kind in (None, k)]
        return sum(v * n for v, n in pairs) / sum(n for _, n in pairs)

    per_kind = {f"eval_exact_{kind}": mean(exact, kind) for kind in dict.fromkeys(kinds)}
    per_kind.update({key: sum(g) / len(g) for key, g in gaps.items()})
    return {"eval_loss": mean(losses), "eval_exact": mean(exact), "eval_token_acc": mean(acc), **per_kind, **spread}


class Trainer:
    """Runs (or resumes) a training run described by a :class:`TrainConfig`."""

    def __init__(self, config: TrainConfig, base: LoadedModel | None = None):
        self.config = config
        self.out = Path(config.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.base = base or load_base_model(config.base_model, dtype=config.dtype, device=config.device)
        self.step = 0
        ckpt = self.out / CHECKPOINT_DIR
        if ckpt.is_dir():
            self.hypernet = DocToLoRA.from_pretrained(ckpt, base=self.base)
            self.optimizer = self._optimizer()
            restore_optimizer(ckpt, self.optimizer)
            self.step = read_state(ckpt)["step"]
            logger.info("resumed from %s at step %d", ckpt, self.step)
        else:
            if config.init_from:
                self.hypernet = DocToLoRA.from_pretrained(config.init_from, base=self.base)
                if config.widen_head_rank:
                    self.hypernet.widen_heads(config.widen_head_rank)
                if config.add_query_hops:
                    self.hypernet.add_query_hops(config.add_query_hops)
                if config.add_activation_keys:
                    self.hypernet.add_activation_keys()
                if config.add_companion:
                    self.hypernet.add_companion(DocToLoRA.from_pretrained(config.add_companion, base=self.base))
            else:
                torch.manual_seed(config.seed)
                self.hypernet = DocToLoRA.for_base_model(self.base, HypernetConfig(**config.hypernet))
            self.optimizer = self._optimizer()
        self.hypernet.to(self.base.device).train()
        self.accelerator = None
        self.forward: torch.nn.Module = self.hypernet
        if config.accelerate:  # data parallel over processes started by `accelerate launch`
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=self.base.device.type == "cpu")
            self.forward, self.optimizer = self.accelerator.prepare(self.hypernet, self.optimizer)
        self.teacher = Teacher(self.base, self.out / "teacher-cache", config.distill_top_k) \
            if config.objective == "distill" else None
        (self.out / "train_config.json").write_text(config.model_dump_json(indent=2))

    def _optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(param_groups(self.hypernet, self.config), lr=self.config.lr,
                                 weight_decay=self.config.weight_decay)

    def train_step(self) -> dict[str, Any]:
        config, step = self.config, self.step
        lr = get_lr(config, step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        stage = config.stage_at(step)
        torch.manual_seed(config.seed * 1_000_003 + step)
        worker = self.accelerator.process_index if self.accelerator else 0
        examples = sample_examples(stage, config.seed, step, "train", stage.batch_size, worker)
        loss, out, extra = compute_loss(self.hypernet, self.base, examples, config, self.teacher, self.forward)
        self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator:
            self.accelerator.backward(loss)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.hypernet.parameters(), config.grad_clip).item()
        self.optimizer.step()
        self.hypernet.invalidate_fingerprint()
        self.step += 1
        return {"step": self.step, "stage": stage.name, "lr": lr, "loss": loss.item(), "answer_loss": out.loss.item(),
                "exact": out.exact, "token_acc": out.token_accuracy, "grad_norm": grad_norm, **extra}

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def save(self) -> None:
        if not self.is_main:
            return
        save_checkpoint(self.out / CHECKPOINT_DIR, self.hypernet, self.optimizer,
                        {"step": self.step, "config": self.config.model_dump()})

    def run(self, max_steps: int | None = None) -> DocToLoRA:
        """Train until the run's last step (or ``max_steps`` more steps), checkpointing as it goes."""
        end = self.config.total_steps if max_steps is None else min(self.config.total_steps, self.step + max_steps)
        log = (self.out / LOG_NAME).open("a") if self.is_main else open(os.devnull, "w")
        bar = tqdm(total=end, initial=self.step, desc="training", unit="step", disable=not self.is_main)
        try:
            while self.step < end:
                t0 = time.perf_counter()
                record = self.train_step()
                record["seconds"] = time.perf_counter() - t0
                if self.is_main and (self.step % self.config.eval_every == 0 or self.step == end):
                    record.update(evaluate(self.hypernet, self.base, self.config, self.step - 1))
                if self.step % self.config.checkpoint_every == 0 or self.step == end:
                    self.save()
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{record['loss']:.3f}", exact=f"{record['exact']:.2f}")
                bar.update(1)
        finally:
            bar.close()
            log.close()
        if self.step >= self.config.total_steps and self.is_main:
            self.hypernet.save_pretrained(self.out / FINAL_DIR)
        return self.hypernet

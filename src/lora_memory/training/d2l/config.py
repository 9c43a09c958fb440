"""Training configuration: one JSON file describes a whole run (``lora-memory train --config FILE``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..objectives import ContrastReference

STRICT = ConfigDict(extra="forbid")
TaskKind = Literal["needle", "facts", "prose"]


class TaskSpec(BaseModel):
    """One data family in a stage's mix, with its generator parameters (see ``training.d2l.data``)."""

    model_config = STRICT

    kind: TaskKind
    weight: float = Field(1.0, gt=0, description="Relative sampling weight within the stage.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the generator.")


class Stage(BaseModel):
    """A curriculum stage: a data mix trained for ``steps`` steps."""

    model_config = STRICT

    name: str
    steps: int = Field(..., ge=1)
    tasks: list[TaskSpec]
    batch_size: int = Field(8, ge=1, description="Documents per step.")


# the options that grow a saved hypernetwork (init_from) in place, and the HypernetConfig field a fresh one sets instead
GROWTHS = {"widen_head_rank": "hypernet.head_rank", "add_query_hops": "hypernet.query_hops",
           "add_activation_keys": "hypernet.activation_keys", "add_companion": "hypernet.companion"}


class TrainConfig(BaseModel):
    """Everything a run needs; saved beside its checkpoints so a run can be resumed or audited."""

    model_config = STRICT

    base_model: str = Field("embedded", description="Base model id/path, or 'embedded'.")
    hypernet: dict[str, Any] = Field(default_factory=dict, description="HypernetConfig overrides.")
    init_from: str | None = Field(None, description="Start from this saved hypernetwork instead of random init.")
    widen_head_rank: int | None = Field(
        None, ge=1, description="With init_from: widen its head maps to this rank first (the same adapters at step 0)."
    )
    add_query_hops: int | None = Field(
        None, ge=2, description="With init_from: give its pooling trunk this many passes first (the same adapters "
                                "at step 0)."
    )
    add_activation_keys: bool = Field(
        False, description="With init_from: key its slots on the target modules' own inputs too "
                           "(HypernetConfig.activation_keys; the same adapters at step 0)."
    )
    add_companion: str | None = Field(
        None, description="With init_from: add this saved associative reader as its companion "
                          "(HypernetConfig.companion; at step 0 each part writes what it wrote alone)."
    )
    stages: list[Stage]
    objective: Literal["answer_ce", "distill"] = Field(
        "answer_ce", description="answer_ce: CE on the known answers; distill: match the in-context teacher."
    )
    distill_top_k: int = Field(16, ge=1, description="Teacher log-probabilities kept per token.")
    lr: float = Field(1e-3, gt=0)
    lr_multipliers: dict[str, float] = Field(
        default_factory=lambda: {"trunk.": 3.0}, description="Parameter-name prefix -> multiplier of lr."
    )
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(20, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    l1_weight: float = Field(0.0, ge=0, description="L1 penalty on generated A and B (D2L uses 0.1).")
    keep_weight: float = Field(
        0.0, ge=0, description="Weight of the do-no-harm term: on questions the document does not answer, "
                               "KL from the bare model's distribution to the student's (prose examples' keep rows)."
    )
    teacher_weight: float = Field(
        0.0, ge=0, description="Weight of context distillation on the true answer: at each answer token, KL from "
                               "the in-context teacher's distribution (the bare model with the document in its "
                               "prompt) to the student's (training.objectives.teacher_loss)."
    )
    contrast_weight: float = Field(
        0.0, ge=0, description="Weight of the read-the-document hinge: each question's answer loss under its own "
                               "document's adapter should sit contrast_margin nats below its loss under another "
                               "document's adapter from the same batch (examples of contrast_kinds)."
    )
    contrast_margin: float = Field(1.0, gt=0, description="Margin of the read-the-document hinge, in nats.")
    contrast_reference: ContrastReference = Field(
        "partner", description="What the own loss is held below (training.objectives.contrast_loss): 'partner' "
                               "(both losses move; can be met by harming other documents), 'fixed_partner' (only "
                               "the own loss moves), 'bias' (the document-free adapter's loss, plus a term that "
                               "keeps another document's adapter no worse than it)."
    )
    contrast_kinds: list[TaskKind] = Field(
        ["prose"], description="Task families whose examples are paired for the hinge."
    )
    quiet_weight: float = Field(
        0.0, ge=0, description="Weight of the quiet term: on examples of quiet_kinds, the squared Frobenius norm "
                               "of the learned reader's document part (its modules' delta beyond the shared bias "
                               "with dedupe_bias, else all of it), summed over its modules and averaged over those "
                               "examples; so a reader with a companion leaves those families to the companion."
    )
    quiet_kinds: list[TaskKind] = Field(["prose"], description="Task families the quiet term holds the learned "
                                                               "reader quiet on.")
    seed: int = 0
    out_dir: str = Field("runs/d2l", description="Checkpoints, logs and the final hypernetwork.")
    checkpoint_every: int = Field(50, ge=1)
    eval_every: int = Field(50, ge=1)
    eval_examples: int = Field(32, ge=1)
    threads: int | None = Field(None, description="torch threads; None keeps torch's default.")
    dtype: str = Field("auto", description="Base model dtype.")
    device: str = Field("auto")
    accelerate: bool = Field(False, description="Data-parallel training under `accelerate launch` (many GPUs).")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if not self.stages:
            raise ValueError("stages: at least one stage is required")
        for option, fresh in GROWTHS.items():
            if getattr(self, option) and not self.init_from:
                raise ValueError(f"{option} grows a saved hypernetwork: set init_from too (or set {fresh} for a "
                                 "fresh one)")
        for option in ("contrast_weight", "teacher_weight"):
            if getattr(self, option) and self.objective != "answer_ce":
                raise ValueError(f"{option} works on the answer losses: it needs objective 'answer_ce'")
        return self

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> Stage:
        """The stage that step ``step`` (0-based) belongs to."""
        for stage in self.stages:
            if step < stage.steps:
                return stage
            step -= stage.steps
        return self.stages[-1]

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.model_validate(json.loads(Path(path).read_text()))

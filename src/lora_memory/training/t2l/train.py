"""Training Text-to-LoRA on the generated multi-task set, nanoGPT style.

Two modes:

- ``sft`` (end to end, better in the T2L paper): each row of a batch draws a
  task, one of its training descriptions and an example; T2L turns the
  description into an adapter; the loss is the base model's cross-entropy on the
  answer tokens with that adapter applied and the example input alone as prompt.
- ``recon``: first train one free LoRA per training task (a few dozen Adam
  steps each, cached on disk), then train T2L to reproduce them from their
  descriptions: the loss is the relative squared Frobenius distance between the
  generated and the target weight deltas ``B @ A``, computed through r x r Gram
  matrices (never the dense deltas), so it is blind to the A/B gauge freedom.

Batches are a pure function of (seed, step), dropout is seeded per step, and a
checkpoint holds the T2L weights, the optimizer state and the step, so a
resumed run is exactly the uninterrupted one.

Usage:
    python -m lora_memory.training.t2l.train --out /work/runs/t2l --steps 1200
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel as PydanticModel
from pydantic import Field
from tqdm.auto import tqdm

from ...adapter import LoRAAdapter, LoRAWeights
from ...base import LoadedModel, load_base_model
from ...hypernet.t2l import T2LConfig, TextToLoRA
from ..checkpoint import read_state, restore_optimizer, save_checkpoint
from ..d2l.trainer import get_lr
from ..objectives import LossOutput, answer_loss
from .data import TASKS, Task, TaskBatch, task_batches, task_by_name, task_split

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
FINAL_DIR = "t2l"
TASK_LORA_DIR = "task-loras"
LOG_NAME = "log.jsonl"


class T2LTrainConfig(PydanticModel):
    """One T2L training run; saved beside its checkpoints."""

    model_config = {"extra": "forbid"}

    out_dir: str = Field("runs/t2l", description="Checkpoint, log, task LoRAs and the final T2L.")
    mode: Literal["sft", "recon"] = Field("sft", description="sft: end-to-end CE; recon: reproduce task LoRAs.")
    base_model: str = Field("embedded", description="Base model id/path, or 'embedded'.")
    t2l: T2LConfig = Field(default_factory=T2LConfig)
    tasks: list[str] | None = Field(None, description="Names of the tasks to train on; None: every training task.")
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(8, ge=1, description="Rows per step, each with its own task and description.")
    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)
    threads: int | None = Field(1, description="torch threads; None keeps torch's default.")
    lora_steps: int = Field(30, ge=1, description="recon: Adam steps per task LoRA.")
    lora_lr: float = Field(5e-3, gt=0, description="recon: learning rate of the task LoRAs.")
    lora_batch_size: int = Field(4, ge=1, description="recon: examples per task-LoRA step.")

    @property
    def total_steps(self) -> int:  # read by trainer.get_lr
        return self.steps


# ------------------------------------------------------------------ losses
def description_embeddings(t2l: TextToLoRA, base: LoadedModel, tasks: list[Task]) -> dict[str, torch.Tensor]:
    """Every description of ``tasks`` -> its (frozen) task embedding, computed once."""
    texts = sorted({d for t in tasks for d in t.descriptions})
    with torch.no_grad():
        emb = t2l.embed(base, texts)
    return dict(zip(texts, emb))


def sft_loss(t2l: TextToLoRA, base: LoadedModel, tb: TaskBatch, table: dict[str, torch.Tensor]) -> LossOutput:
    """Answer cross-entropy of the base model with each row's generated adapter."""
    adapter = t2l(torch.stack([table[d] for d in tb.descriptions]))
    return answer_loss(base.model, tb.batch, adapter)


def delta_distance(generated: LoRAAdapter, target: LoRAAdapter) -> torch.Tensor:
    """Mean over modules and rows of ||dW - dW*||^2 / ||dW*||^2, with dW = scaling * B @ A (batched)."""
    terms = []
    for name, w in generated.weights.items():
        t = target.weights[name]
        a, b = w.A.float() * generated.scaling, w.B.float()  # (N, r, d_in), (N, d_out, r)
        ta, tb = t.A.float() * target.scaling, t.B.float()
        # ||B A||^2 = <A A^T, B^T B>; <B A, B* A*> = <A A*^T, B^T B*>  (r x r matrices only)
        gen = ((a @ a.mT) * (b.mT @ b)).sum((-1, -2))
        cross = ((a @ ta.mT) * (b.mT @ tb)).sum((-1, -2))
        ref = ((ta @ ta.mT) * (tb.mT @ tb)).sum((-1, -2))
        terms.append((gen - 2 * cross + ref) / ref.clamp(min=1e-8))
    return torch.stack(terms).mean()


# -------------------------------------------------------------- task LoRAs
def free_task_lora(base: LoadedModel, config: T2LConfig, seed: int = 0) -> LoRAAdapter:
    """A trainable LoRA on T2L's targets: A ~ U(+-1/sqrt(d_in)) as PEFT, B = 0 (a no-op at start)."""
    gen = torch.Generator().manual_seed(seed)
    assert config.module_dims is not None and config.target_layers is not None, "config is not bound to a base model"
    weights = {}
    for suffix in config.target_modules:
        d_in, d_out = config.module_dims[suffix]
        for layer in config.target_layers:
            a = (torch.rand(config.rank, d_in, generator=gen) * 2 - 1) / math.sqrt(d_in)
            weights[config.module_name(layer, suffix)] = LoRAWeights(
                a.requires_grad_(), torch.zeros(d_out, config.rank, requires_grad=True))
    return LoRAAdapter(weights, config.lora_scaling)


def train_task_lora(base: LoadedModel, task: Task, config: T2LConfig, steps: int, lr: float, batch_size: int,
                    seed: int = 0) -> tuple[LoRAAdapter, list[float]]:
    """Fit a free LoRA to one task's examples (prompts without the description) with Adam."""
    adapter = free_task_lora(base, config, seed)
    opt = torch.optim.Adam([p for w in adapter.weights.values() for p in (w.A, w.B)], lr=lr)
    rows = LoRAAdapter({k: LoRAWeights(w.A.expand(batch_size, -1, -1), w.B.expand(batch_size, -1, -1))
                        for k, w in adapter.weights.items()}, adapter.scaling)  # one copy per batch row
    batches = task_batches(base.tokenizer, [task], batch_size, seed=seed)
    losses = []
    for _ in range(steps):
        loss = answer_loss(base.model, next(batches).batch, rows).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    weights = {k: LoRAWeights(w.A.detach(), w.B.detach()) for k, w in adapter.weights.items()}
    return LoRAAdapter(weights, adapter.scaling, {"task": task.name, "steps": steps}), losses


def task_lora_targets(base: LoadedModel, tasks: list[Task], cfg: T2LTrainConfig, t2l_config: T2LConfig
                      ) -> dict[str, LoRAAdapter]:
    """One trained LoRA per task, trained once and cached under ``out_dir/task-loras/<task>``."""
    root = Path(cfg.out_dir) / TASK_LORA_DIR
    out = {}
    for task in tqdm(tasks, desc="task LoRAs", unit="task"):
        path = root / task.name
        if not path.is_dir():
            adapter, losses = train_task_lora(base, task, t2l_config, cfg.lora_steps, cfg.lora_lr,
                                              cfg.lora_batch_size, seed=cfg.seed)
            adapter.metadata["losses"] = [round(x, 4) for x in losses]
            adapter.save(path)
            logger.info("task LoRA %s: loss %.3f -> %.3f", task.name, losses[0], losses[-1])
        out[task.name] = LoRAAdapter.load(path)
    return out


# ------------------------------------------------------------------- loop
def build(cfg: T2LTrainConfig, base: LoadedModel) -> tuple[TextToLoRA, torch.optim.Optimizer, int]:
    """The T2L, its optimizer and the step to start at: resumed from the checkpoint when there is one."""
    ckpt = Path(cfg.out_dir) / CHECKPOINT_DIR
    if ckpt.is_dir():
        t2l = TextToLoRA.from_pretrained(ckpt, base=base)
    else:
        torch.manual_seed(cfg.seed)
        t2l = TextToLoRA.for_base_model(base, cfg.t2l)
    t2l.to(base.device).train()
    opt = torch.optim.AdamW(t2l.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    if ckpt.is_dir():
        restore_optimizer(ckpt, opt)
        step = read_state(ckpt)["step"]
        logger.info("resumed from %s at step %d", ckpt, step)
    return t2l, opt, step


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resumed run restarts from)."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in keep))


def train(cfg: T2LTrainConfig, base: LoadedModel | None = None, progress: bool = True,
          until: int | None = None) -> TextToLoRA:
    """Run (or resume) ``cfg`` to ``cfg.steps``; returns the trained T2L, also saved to ``out_dir/t2l``.

    ``until`` stops (with a checkpoint) after that step, so a run can be split
    across sessions on a shared machine; the next call resumes it exactly.
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base = base or load_base_model(cfg.base_model)
    (out / "train_config.json").write_text(cfg.model_dump_json(indent=2))
    t2l, opt, step = build(cfg, base)
    train_tasks = [task_by_name(n) for n in cfg.tasks] if cfg.tasks else task_split()[0]
    table = description_embeddings(t2l, base, TASKS)
    targets = task_lora_targets(base, train_tasks, cfg, t2l.config) if cfg.mode == "recon" else None
    batches = task_batches(base.tokenizer, train_tasks, cfg.batch_size, cfg.seed, start=step)
    log_path = out / LOG_NAME
    _trim_log(log_path, step)
    last = cfg.steps if until is None else min(until, cfg.steps)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"T2L {cfg.mode}", disable=not progress)
    with log_path.open("a") as log:
        while step < last:
            start = time.perf_counter()
            lr = get_lr(cfg, step)
            for group in opt.param_groups:
                group["lr"] = lr
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout: exact on resume
            tb = next(batches)
            record: dict[str, float] = {}
            if targets is None:
                res = sft_loss(t2l, base, tb, table)
                loss = res.loss
                record.update(exact=res.exact, token_acc=res.token_accuracy)
            else:
                generated = t2l(torch.stack([table[d] for d in tb.descriptions]))
                loss = delta_distance(generated, LoRAAdapter.stack([targets[name] for name in tb.tasks]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(t2l.parameters(), cfg.grad_clip).item()
            opt.step()
            t2l.invalidate_fingerprint()
            step += 1
            record = {"step": step, "lr": lr, "loss": loss.item(), "grad_norm": grad_norm, **record,
                      "seconds": time.perf_counter() - start}
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            if step % cfg.checkpoint_every == 0 or step == last:
                save_checkpoint(out / CHECKPOINT_DIR, t2l, opt, {"step": step, "config": cfg.model_dump()})
    bar.close()
    t2l.eval()
    if step == cfg.steps:
        t2l.save_pretrained(out / FINAL_DIR)
    return t2l


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train Text-to-LoRA on the generated multi-task set.")
    parser.add_argument("--out", default="runs/t2l", help="run directory (resumes if it has a checkpoint)")
    parser.add_argument("--mode", choices=["sft", "recon"], default="sft")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--variant", choices=["L", "M", "S"], default="L")
    parser.add_argument("--encoder", choices=["minilm", "base"], default="minilm")
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--lora-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--until", type=int, help="stop (with a checkpoint) after this step; rerun to resume")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = T2LTrainConfig(out_dir=args.out, mode=args.mode, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, threads=args.threads, seed=args.seed, lora_steps=args.lora_steps,
                         t2l=T2LConfig(variant=args.variant, task_encoder=args.encoder, hidden_dim=args.hidden_dim))
    train(cfg, until=args.until)


if __name__ == "__main__":
    main()

"""Where the answer loss sits: ``python -m lora_memory.evaluation.answer_positions [--hypernet DIR]``.

Teacher-forced, on the written questions' validation part (training-split articles
that no run trains on; the first wording of each fact, as ``lora-memory eval --prose
--validation`` asks them). Each answer is its tokens followed by the end of turn; the
loss (nats) is split into the answer's **first token** (which fact, in which form),
its **inner tokens** (given the first one, the rest of it) and the **end of turn**
(stopping after a short answer). Settings: closed-book; in context (the article
before the question, the prompt of the in-context baseline); in context after one
worked example of a short answer (``ONE_SHOT``: the same reading with the answer
format shown); and, with a hypernetwork, its own article's adapter, the next
article's adapter and the document-free bias adapter. So it says what an
in-context teacher could add over the true answers (context distillation), and
which part of the answer an adapter reads from its text.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from ..base import LoadedModel, load_base_model
from ..hypernet import DocToLoRA
from ..training.batching import StudentBatch, answer_ids, student_batch
from ..training.d2l.prose import Article, written_articles, written_questions
from ..training.objectives import token_losses
from .prompts import in_context_prompt

Prompt = Callable[[Article, str], str | list[dict[str, str]]]
ONE_SHOT = [{"role": "user", "content": "Kigali is the capital and largest city of Rwanda. It was founded in 1907 "
                                        "during German colonial rule.\n\nWhen was Kigali founded?"},
            {"role": "assistant", "content": "1907"}]
PROMPTS: dict[str, Prompt] = {
    "closed_book": lambda article, q: q,
    "in_context": lambda article, q: in_context_prompt(article.text, q),
    "in_context_one_shot": lambda article, q: ONE_SHOT + [{"role": "user", "content": in_context_prompt(article.text, q)}],
}
PARTS = ("first", "inner", "end", "all")


def _parts(losses: torch.Tensor, rows: torch.Tensor) -> dict[str, list[float]]:
    """Each position's loss under the part of its answer it belongs to (first, inner, end) and under all."""
    first = torch.ones_like(rows, dtype=torch.bool)
    first[1:] = rows[1:] != rows[:-1]
    end = torch.ones_like(rows, dtype=torch.bool)
    end[:-1] = rows[1:] != rows[:-1]
    inner = ~first & ~end
    return {"first": losses[first].tolist(), "inner": losses[inner].tolist(), "end": losses[end & ~first].tolist(),
            "all": losses.tolist()}


@torch.no_grad()
def answer_positions(base: LoadedModel, hypernet: DocToLoRA | None = None, articles: int = 60
                     ) -> dict[str, dict[str, float]]:
    """Setting -> part of the answer -> mean loss in nats (and ``n``, the positions of that part)."""
    valid = written_questions("valid")
    chosen = list(written_articles("valid")[:articles])
    tok = base.tokenizer
    collected: dict[str, dict[str, list[float]]] = {}

    def add(setting: str, batch: StudentBatch, adapter: object | None) -> None:
        losses, rows = token_losses(base.model, batch, adapter)  # type: ignore[arg-type]
        for part, values in _parts(losses.float(), rows).items():
            collected.setdefault(setting, {p: [] for p in PARTS})[part].extend(values)

    adapters = [hypernet.internalize(base, a.text) for a in chosen] if hypernet is not None else []
    for i, article in enumerate(chosen):
        qas = [wordings[0] for wordings in valid[article.title]]
        answers = [answer_ids(tok, qa.answer) for qa in qas]
        owner = [0] * len(qas)
        for setting, prompt in PROMPTS.items():
            add(setting, student_batch(tok, [prompt(article, qa.question) for qa in qas], answers, owner), None)
        if hypernet is not None:
            batch = student_batch(tok, [qa.question for qa in qas], answers, owner)
            add("own_adapter", batch, adapters[i].as_batch())
            add("other_adapter", batch, adapters[(i + 1) % len(chosen)].as_batch())
            add("bias_adapter", batch, hypernet.bias_adapter().as_batch())
    return {setting: {**{p: sum(v) / max(1, len(v)) for p, v in parts.items()},
                      **{f"n_{p}": float(len(v)) for p, v in parts.items()}}
            for setting, parts in collected.items()}


def positions_markdown(result: dict[str, dict[str, float]], name: str) -> str:
    lines = [f"Answer loss by position (nats; {name}; {result['closed_book']['n_all']:.0f} answer tokens)", "",
             "| setting | first token | inner tokens | end of turn | all |", "|---|---:|---:|---:|---:|"]
    for setting, parts in result.items():
        lines.append(f"| {setting.replace('_', ' ')} | " + " | ".join(f"{parts[p]:.2f}" for p in PARTS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hypernet", default=None, help="A Doc-to-LoRA checkpoint directory (default: none, the "
                                                         "base model's settings only).")
    parser.add_argument("--articles", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_base_model("embedded", dtype=args.dtype, device="cpu")
    hypernet = DocToLoRA.from_pretrained(args.hypernet, base=base).eval() if args.hypernet else None
    result = answer_positions(base, hypernet, args.articles)
    print(positions_markdown(result, args.hypernet or "base model only"))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

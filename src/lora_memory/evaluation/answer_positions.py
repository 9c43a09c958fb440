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

``--sentences`` asks instead how much the article helps with the *fact* when the
answer is the article's own sentence that holds it (the fact's tokens then follow a
restatement) against the bare span: for every question whose answer lies in one
sentence of the text, the nats summed over the fact's tokens, closed-book and in
context (and, with ``--hypernet``, under its own and the next article's adapter), in
both forms.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from ..adapter import LoRAAdapter
from ..base import LoadedModel, load_base_model
from ..hypernet import DocToLoRA
from ..training.batching import StudentBatch, answer_ids, student_batch
from ..training.d2l.prose import Article, answer_clause, written_articles, written_questions
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

    def add(setting: str, batch: StudentBatch, adapter: LoRAAdapter | None) -> None:
        losses, rows = token_losses(base.model, batch, adapter)
        for part, values in _parts(losses.float(), rows).items():
            collected.setdefault(setting, {p: [] for p in PARTS})[part].extend(values)

    adapters = [hypernet.internalize(base, a.text).as_batch() for a in chosen] if hypernet is not None else []
    bias = hypernet.bias_adapter().as_batch() if hypernet is not None else None
    for i, article in enumerate(chosen):
        qas = [wordings[0] for wordings in valid[article.title]]
        answers = [answer_ids(tok, qa.answer) for qa in qas]
        owner = [0] * len(qas)
        for setting, prompt in PROMPTS.items():
            add(setting, student_batch(tok, [prompt(article, qa.question) for qa in qas], answers, owner), None)
        if hypernet is not None:
            batch = student_batch(tok, [qa.question for qa in qas], answers, owner)
            add("own_adapter", batch, adapters[i])
            add("other_adapter", batch, adapters[(i + 1) % len(chosen)])
            add("bias_adapter", batch, bias)
    return {setting: {**{p: sum(v) / max(1, len(v)) for p, v in parts.items()},
                      **{f"n_{p}": float(len(v)) for p, v in parts.items()}}
            for setting, parts in collected.items()}


def _fact_nats(base: LoadedModel, prompts: list[str], answers: list[str], spans: list[tuple[int, int]],
               adapter: LoRAAdapter | None = None) -> list[float]:
    """Each answer's loss summed over the tokens that overlap its character span ``spans[i]`` (every row with
    ``adapter``, a single-row batched adapter, if given).
    """
    tok = base.tokenizer
    ids, masks = [], []
    for answer, (start, end) in zip(answers, spans, strict=True):
        enc = tok(answer, add_special_tokens=False, return_offsets_mapping=True)
        ids.append(enc["input_ids"] + [tok.eos_token_id])
        masks.append([a < end and b > start for a, b in enc["offset_mapping"]] + [False])
    owner = [0] * len(ids) if adapter is not None else list(range(len(ids)))
    losses, rows = token_losses(base.model, student_batch(tok, prompts, ids, owner), adapter)
    fact = torch.tensor([m for mask in masks for m in mask])
    sums = torch.zeros(len(ids)).index_add(0, rows[fact].cpu(), losses[fact].float().cpu())
    return sums.tolist()


@torch.no_grad()
def fact_in_sentence(base: LoadedModel, articles: int = 60, hypernet: DocToLoRA | None = None) -> dict[str, float]:
    """Nats summed over the fact's tokens: span or sentence answers (the article's sentence through the answer's
    clause, as ``answers="sentence"`` training targets are), closed-book or in context, and with a hypernetwork
    its own article's adapter and the next article's (means over facts).
    """
    valid = written_questions("valid")
    chosen = list(written_articles("valid")[:articles])
    adapters = [hypernet.internalize(base, a.text).as_batch() for a in chosen] if hypernet is not None else []
    out: dict[str, list[float]] = {}
    for i, article in enumerate(chosen):
        for qa in (wordings[0] for wordings in valid[article.title]):
            sentence = answer_clause(article.text, qa.answer)
            if sentence is None:
                continue
            at = sentence.index(qa.answer)
            spans = [(0, len(qa.answer)), (at, at + len(qa.answer))]
            settings: dict[str, tuple[str, LoRAAdapter | None]] = {
                "closed_book": (qa.question, None), "in_context": (in_context_prompt(article.text, qa.question), None)}
            if adapters:
                settings.update(own_adapter=(qa.question, adapters[i]),
                                other_adapter=(qa.question, adapters[(i + 1) % len(chosen)]))
            for setting, (prompt, adapter) in settings.items():
                span_nats, sentence_nats = _fact_nats(base, [prompt] * 2, [qa.answer, sentence], spans, adapter)
                out.setdefault(f"span_{setting}", []).append(span_nats)
                out.setdefault(f"sentence_{setting}", []).append(sentence_nats)
    means = {key: sum(v) / len(v) for key, v in out.items()}
    return {**means, "n": float(len(out["span_closed_book"]))}


def sentences_markdown(result: dict[str, float]) -> str:
    settings = [s for s in ("closed_book", "in_context", "own_adapter", "other_adapter") if f"span_{s}" in result]
    lines = [f"Nats over the fact's tokens ({result['n']:.0f} facts found in one sentence of their article)", "",
             "| answer form | " + " | ".join(s.replace("_", " ") for s in settings) + " | what the article adds |",
             "|---|" + "---:|" * (len(settings) + 1)]
    for form in ("span", "sentence"):
        closed, ctx = result[f"{form}_closed_book"], result[f"{form}_in_context"]
        lines.append(f"| {form} | " + " | ".join(f"{result[f'{form}_{s}']:.2f}" for s in settings)
                     + f" | {closed - ctx:.2f} |")
    return "\n".join(lines)


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
    parser.add_argument("--sentences", action="store_true", help="Span against sentence answers: what the article "
                                                                 "adds to the fact's tokens (with --hypernet, also "
                                                                 "under the own and the next article's adapter).")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_base_model("embedded", dtype=args.dtype, device="cpu")
    hypernet = DocToLoRA.from_pretrained(args.hypernet, base=base).eval() if args.hypernet else None
    if args.sentences:
        facts = fact_in_sentence(base, args.articles, hypernet)
        print(sentences_markdown(facts))
        print(json.dumps(facts))
        return 0
    result = answer_positions(base, hypernet, args.articles)
    print(positions_markdown(result, args.hypernet or "base model only"))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

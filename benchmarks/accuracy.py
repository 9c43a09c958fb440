"""Benchmark 4: answer accuracy, internalized vs in-context vs RAG vs closed-book.

Held-out data and scoring come from the training package, so these numbers are
comparable with ``lora-memory eval``: needle-in-a-haystack documents
(:func:`lora_memory.training.d2l.data.needle_example`, one per depth and length) and
fictional-fact documents (:func:`~lora_memory.training.d2l.data.facts_example`,
split ``heldout``), scored with :func:`lora_memory.evaluation.scoring.exact_match`
and :func:`~lora_memory.evaluation.scoring.contains`. Greedy answers only.

Internalized answers come two ways: with the adapter of the chunk BM25 ranks
first for the question (what ``LoRAMemory`` does by default, ``top_k=1``) and
with every chunk's adapter concatenated (the reference's composition).
"""

from __future__ import annotations

import random
from pathlib import Path

from lora_memory.evaluation.d2l import ChunkedDocument
from lora_memory.evaluation.prompts import in_context_prompt
from lora_memory.evaluation.scoring import contains, exact_match
from lora_memory.generation import GenerationConfig, generate
from lora_memory.training.d2l.data import Example, facts_example, needle_example

from .common import Context, Section, md_table
from .plots import grouped_bars

ROUTED, ALL_CHUNKS = "internalized (routed chunk)", "internalized (all chunks)"
VARIANTS = (ROUTED, ALL_CHUNKS, "in-context", "RAG", "closed-book")


def _answers(ctx: Context, example: Example, config: GenerationConfig) -> dict[str, list[tuple[str, str]]]:
    """(prediction, truth) per variant for every question of one document."""
    base = ctx.base
    doc = ChunkedDocument.encode(ctx.hypernet, base, example.document)
    parts = [p.to(dtype=base.dtype) for p in doc.adapters]  # as the memory applies them
    composed = ctx.hypernet.compose(doc.adapters).to(dtype=base.dtype)
    index = ctx.rag.index(example.document)
    out: dict[str, list[tuple[str, str]]] = {v: [] for v in VARIANTS}
    for qa in example.qa:
        prompts = {ROUTED: (qa.question, parts[doc.routed(qa.question)]), ALL_CHUNKS: (qa.question, composed),
                   "in-context": (in_context_prompt(example.document, qa.question), None),
                   "RAG": (ctx.rag.prompt(index, qa.question), None),
                   "closed-book": (qa.question, None)}
        for variant, (prompt, applied) in prompts.items():
            text = generate(base.model, base.tokenizer, prompt, adapter=applied, config=config).text
            out[variant].append((text, qa.answer))
    return out


def _score(pairs: list[tuple[str, str]]) -> tuple[float, float]:
    """(exact, contains) accuracy."""
    n = len(pairs)
    return sum(exact_match(p, a) for p, a in pairs) / n, sum(contains(p, a) for p, a in pairs) / n


def run(ctx: Context, img: Path) -> Section:
    s = ctx.settings
    config = GenerationConfig(max_new_tokens=s.accuracy_max_new_tokens)
    rng = random.Random(s.seed + 4)
    groups: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for length in s.needle_lengths:
        pairs: dict[str, list[tuple[str, str]]] = {v: [] for v in VARIANTS}
        for depth in s.needle_depths:
            example = needle_example(rng, "heldout", length, length, kinds=("number",), depth=depth)
            for v, got in _answers(ctx, example, config).items():
                pairs[v].extend(got)
        groups[f"needle {length:,}"] = pairs
    facts: dict[str, list[tuple[str, str]]] = {v: [] for v in VARIANTS}
    for _ in range(s.facts_documents):
        for v, got in _answers(ctx, facts_example(rng, "heldout", questions=s.facts_questions), config).items():
            facts[v].extend(got)
    groups["fictional facts"] = facts

    scores = {g: {v: _score(p) for v, p in pairs.items()} for g, pairs in groups.items()}
    rows = [[g, str(len(groups[g][VARIANTS[0]])), *(f"{scores[g][v][0]:.2f} / {scores[g][v][1]:.2f}" for v in VARIANTS)]
            for g in groups]
    figure = grouped_bars(img / "accuracy.png", "Answer accuracy (contains)", "fraction correct", list(groups),
                          {v: [scores[g][v][1] for g in groups] for v in VARIANTS},
                          note=f"greedy, max_new_tokens={s.accuracy_max_new_tokens}; hypernetwork: "
                               + ("trained" if ctx.hypernet_trained else "random init"))
    examples = [f"- {v}: {groups['fictional facts'][v][0][0]!r} (truth {groups['fictional facts'][v][0][1]!r})"
                for v in VARIANTS]
    lines = [
        f"Hypernetwork: {ctx.hypernet_label}.",
        "",
        *md_table(["task", "questions", *(f"{v} exact / contains" for v in VARIANTS)], rows),
        "",
        f"Needle documents: {len(s.needle_depths)} per length (needle depths {s.needle_depths}), held-out filler "
        f"and phrasing. Fictional facts: {s.facts_documents} held-out documents"
        + (f", {s.facts_questions} question(s) each" if s.facts_questions else ", every question")
        + ". *Routed chunk*: the adapter of the chunk BM25 ranks first for the question (the memory's default); "
          "*all chunks*: every chunk's adapter concatenated (the same adapter when the document is one chunk). "
          f"RAG: top {s.rag_top_k} chunks. *exact*: normalised string match; *contains*: the answer appears in "
          "the reply as whole words (fairer to full-sentence replies).",
        "",
        "First fictional-fact answer of each variant:",
        *examples,
        "",
        f"![accuracy](img/{figure.name})",
    ]
    data = {g: {v: {"exact": scores[g][v][0], "contains": scores[g][v][1], "answers": groups[g][v]}
                for v in VARIANTS} for g in groups}
    return Section("4. Accuracy: needle in a haystack and fictional facts", lines, [figure.name], [], data)

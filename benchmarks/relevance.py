"""Routing relevance of matching and unrelated questions: the measurement behind ``MemoryConfig.min_relevance``.

Uses the held-out documents and questions of the collection eval
(:func:`lora_memory.evaluation.collections.make_documents`: needle and fictional-fact
targets, needle and fact distractors), chunked by the embedded tokenizer at the
shipped hypernetwork's 256 tokens, and the library's own router
(:class:`lora_memory.routing.BM25Index`). For each collection size N it records the
relevance of the best chunk for three kinds of question:

- ``match``: a question about a target, asked of N - 1 distractors plus that target;
- ``absent``: the same questions asked of N distractors only (the target was never
  added, or was removed);
- ``unrelated``: general questions no document is about, asked of the same N distractors.

No model runs; it takes a few seconds. Prints a markdown report (docs/reliability.md quotes it).

Usage::

    python -m benchmarks.relevance
"""

from __future__ import annotations

import argparse
import statistics

from transformers import AutoTokenizer

from lora_memory.base import embedded_model_dir
from lora_memory.chunking import chunk_text
from lora_memory.config import DEFAULT_MIN_RELEVANCE
from lora_memory.evaluation.collections import CollectionEvalConfig, make_documents
from lora_memory.routing import BM25Index

CHUNK_TOKENS = 256  # the shipped hypernetwork's max_chunk_tokens, the memory's default chunk length
THRESHOLDS = (0.15, 0.2, 0.25, 0.3)
UNRELATED = [
    "xyzzy plugh?", "What is the capital of France?", "How do I bake sourdough bread?", "Who wrote Hamlet?",
    "What is the boiling point of water?", "Explain quantum entanglement simply.", "What time is it?",
    "Translate hello into Spanish.", "How many legs does a spider have?", "What is 2 + 2?",
    "Why is the sky blue?", "Recommend a good science fiction novel.", "How do vaccines work?",
    "What is the tallest mountain on Earth?", "How do I reverse a list in Python?",
    "What causes the seasons?", "Who painted the Mona Lisa?", "How far away is the Moon?",
    "What is photosynthesis?", "Summarize the plot of Romeo and Juliet.",
]


def best_relevance(texts: list[str], question: str) -> float:
    """The relevance of the chunk the router puts first for ``question``."""
    index = BM25Index(texts)
    [(_, score)] = index.top_k(question, 1)
    return index.relevance(question, score)


def measure(sizes: list[int]) -> dict[tuple[int, str], list[float]]:
    """(size, kind) -> the best chunk's relevance for every question of that kind."""
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    targets, distractors = make_documents(CollectionEvalConfig(sizes=sizes))

    def chunks(doc: str) -> list[str]:
        return [c.text for c in chunk_text(tokenizer, doc, CHUNK_TOKENS)]

    target_chunks = [chunks(t.document) for t in targets]
    distractor_chunks = [chunks(d.document) for d in distractors]
    results: dict[tuple[int, str], list[float]] = {}
    for size in sizes:
        others = [c for d in distractor_chunks[:size - 1] for c in d]
        without = [c for d in distractor_chunks[:size] for c in d]
        for target, own in zip(targets, target_chunks):
            for qa in target.qa:
                results.setdefault((size, f"match ({target.kind})"), []).append(best_relevance(others + own,
                                                                                              qa.question))
                results.setdefault((size, f"absent ({target.kind})"), []).append(best_relevance(without,
                                                                                               qa.question))
        results[(size, "unrelated")] = [best_relevance(without, q) for q in UNRELATED]
    return results


def report(results: dict[tuple[int, str], list[float]]) -> str:
    """A markdown table: per size and kind, the relevance's range and the share kept at each threshold."""
    head = "| documents | questions | n | min | median | max | " + " | ".join(f"kept at {t}" for t in THRESHOLDS)
    lines = [head + " |", "|" + "---|" * (6 + len(THRESHOLDS))]
    for (size, kind), values in results.items():
        kept = " | ".join(f"{sum(v >= t for v in values) / len(values):.2f}" for t in THRESHOLDS)
        lines.append(f"| {size} | {kind} | {len(values)} | {min(values):.2f} | {statistics.median(values):.2f} | "
                     f"{max(values):.2f} | {kept} |")
    return "\n".join(lines) + f"\n\nDefault MemoryConfig.min_relevance: {DEFAULT_MIN_RELEVANCE}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100], help="documents per collection")
    args = parser.parse_args(argv)
    print(report(measure(args.sizes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

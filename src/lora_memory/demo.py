"""A two-minute look at the idea on the embedded model: questions about a document it never saw.

Each question is answered several ways ("modes"), each with its time and prompt
length:

- ``in context``: the document is pasted into the prompt (what RAG does).
- ``closed book``: no document at all (the base model's own knowledge: it has none here).
- ``internalized``: the document became a LoRA adapter through the Doc-to-LoRA
  hypernetwork, and the prompt holds only the question. This mode runs when a
  trained hypernetwork checkpoint is installed; until then the demo says so.

A mode is a function ``(base, question, config) -> Generated``; adding one is
adding an entry to the list :func:`modes` returns.

Run it with ``lora-memory demo`` or ``python -m lora_memory.demo``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapter import LoRAAdapter
from .base import BaseModel, load_base_model
from .generation import GenerationConfig, Generated, generate
from .hypernet import DocToLoRA, default_hypernet_dir
from .hypernet.model import CONFIG_NAME

DOCUMENT = """\
Varn Island lies forty kilometres off the northern coast. Its lighthouse keeper is Odile Marchetti, \
who has kept the light since 1998 and shares the keeper's cottage with a tortoise named Pell.

The ferry to Varn leaves the mainland harbour of Tessel at seven every morning and returns at dusk. \
A return ticket costs four silver marks. Every spring the islanders hold a kite festival on the \
northern cliffs, and the island's only bakery sells rye bread with caraway seeds."""

QUESTIONS: list[tuple[str, str]] = [  # (question, a word the right answer contains)
    ("Who is the lighthouse keeper of Varn Island?", "Odile"),
    ("What is the name of the keeper's tortoise?", "Pell"),
    ("How much does a return ferry ticket to Varn cost?", "four"),
]

SYSTEM = "Answer the question in one short sentence."

Mode = Callable[[BaseModel, str, GenerationConfig], Generated]


@dataclass
class Row:
    """One answer: which mode, what it said, whether it contains the expected word, and its cost."""

    mode: str
    question: str
    answer: str
    correct: bool
    seconds: float
    prompt_tokens: int


def in_context(base: BaseModel, question: str, config: GenerationConfig) -> Generated:
    """The document in the prompt, then the question."""
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Document:\n{DOCUMENT}\n\nQuestion: {question}"}]
    return generate(base.model, base.tokenizer, messages, config=config)


def closed_book(base: BaseModel, question: str, config: GenerationConfig) -> Generated:
    """The question alone, with no adapter: what the base model knows by itself."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return generate(base.model, base.tokenizer, messages, config=config)


def internalized(adapter: LoRAAdapter) -> Mode:
    """The question alone, answered with the document's adapter applied."""

    def answer(base: BaseModel, question: str, config: GenerationConfig) -> Generated:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        return generate(base.model, base.tokenizer, messages, adapter=adapter, config=config)

    return answer


def internalize_document(base: BaseModel, directory: Path) -> tuple[LoRAAdapter, float] | None:
    """The demo document as an adapter and the seconds it took, or None without a checkpoint in ``directory``."""
    if not (directory / CONFIG_NAME).is_file():
        return None
    start = time.perf_counter()
    hypernet = DocToLoRA.from_pretrained(directory, base=base, device=base.device)
    adapter = hypernet.internalize(base, DOCUMENT)
    return adapter, time.perf_counter() - start


def modes(adapter: LoRAAdapter | None) -> list[tuple[str, Mode]]:
    """The answering modes, in display order; ``internalized`` only when there is an adapter."""
    out: list[tuple[str, Mode]] = [("in context", in_context), ("closed book", closed_book)]
    if adapter is not None:
        out.append(("internalized", internalized(adapter)))
    return out


def run(base: BaseModel, config: GenerationConfig, chosen: list[tuple[str, Mode]]) -> list[Row]:
    """Answer every question in every chosen mode."""
    rows = []
    for name, mode in chosen:
        for question, expected in QUESTIONS:
            start = time.perf_counter()
            out = mode(base, question, config)
            seconds = time.perf_counter() - start
            rows.append(Row(name, question, out.text.strip(), expected.lower() in out.text.lower(), seconds,
                            out.prompt_tokens))
    return rows


def report(rows: list[Row], mode_names: list[str]) -> str:
    """The rows as readable text: per question, each mode's answer; then a per-mode summary."""
    lines = []
    for question, _ in QUESTIONS:
        lines.append(f"\nQ: {question}")
        for row in (r for r in rows if r.question == question):
            mark = "ok " if row.correct else "-- "
            lines.append(f"  {mark}{row.mode:<13} {row.seconds:5.2f} s {row.prompt_tokens:4d} prompt tokens  "
                         f"{row.answer}")
    lines.append("\nmode           correct  mean time  mean prompt tokens")
    for name in mode_names:
        mine = [r for r in rows if r.mode == name]
        lines.append(f"{name:<14} {sum(r.correct for r in mine)}/{len(mine)}      "
                     f"{sum(r.seconds for r in mine) / len(mine):5.2f} s   "
                     f"{sum(r.prompt_tokens for r in mine) / len(mine):7.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Load the embedded model, answer the questions in each mode and print the comparison."""
    parser = argparse.ArgumentParser(prog="lora-memory demo", description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch. One is the default: on busy 2-core machines two threads "
                             "were measured over 10x slower than one for this small model.")
    args = parser.parse_args(argv if argv is not None else [])
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    base = load_base_model("embedded")
    print(f"Loaded {base.name} ({base.dtype}, {base.device}) in {time.perf_counter() - start:.1f} s")
    print(f"\nThe document ({len(base.tokenizer(DOCUMENT).input_ids)} tokens), which the model never saw:\n")
    print(DOCUMENT)
    internalization = internalize_document(base, default_hypernet_dir())
    if internalization is not None:
        adapter, seconds = internalization
        print(f"\nInternalized it in {seconds:.2f} s: an adapter of rank {adapter.rank}, "
              f"{adapter.nbytes() / 1024:.0f} KiB, from {adapter.metadata.get('n_chunks', 1)} chunk(s).")
    chosen = modes(internalization[0] if internalization is not None else None)
    rows = run(base, config, chosen)
    print(report(rows, [name for name, _ in chosen]))
    if internalization is None:
        print("\nInternalization (the document as a LoRA adapter, no document in the prompt) arrives with the\n"
              "trained Doc-to-LoRA hypernetwork checkpoint; this installation does not have it yet, so only\n"
              "the two reference modes ran.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

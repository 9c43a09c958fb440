"""A two-minute look at the idea on the embedded model: questions about documents it never saw.

Two short fact sheets about fictional people and companies (the kind of document
the shipped hypernetwork was trained on) are ingested into a temporary
collection. Each question is answered several ways ("modes"), each with its
time and prompt length:

- ``in context``: the documents are pasted into the prompt (what RAG does).
- ``closed book``: no document at all (the base model's own knowledge: it has none here).
- ``internalized``: the documents became LoRA adapters through the Doc-to-LoRA
  hypernetwork; :class:`~lora_memory.memory.LoRAMemory` applies the routed one and
  the prompt holds only the question. This mode runs when a trained hypernetwork
  checkpoint is installed; otherwise the demo says so.

A mode is a function ``(base, question, config) -> Generated``; adding one is
adding an entry to the list :func:`modes` returns.

Run it with ``lora-memory demo`` or ``python -m lora_memory.demo``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import LoadedModel, load_base_model
from .checkpoints import resolve_hypernet
from .errors import ModelNotFoundError
from .evaluation.prompts import in_context_prompt
from .evaluation.scoring import contains
from .generation import Generated, GenerationConfig, generate
from .memory import LoRAMemory

DOCUMENTS: dict[str, str] = {
    "keeper": "Odile Marchetti was born in 1958. Odile Marchetti lives in the city of Varnholm. "
              "By profession, Odile Marchetti is a gardener. Odile Marchetti's pet is called Pell.",
    "ferry": "The ferry company Tessel Works was founded in 1911. The founder of Tessel Works is Mira Kessel. "
             "Tessel Works has its headquarters in Dravenport. Tessel Works makes sailboats.",
}
DOCUMENT = "\n\n".join(DOCUMENTS.values())  # what the in-context mode pastes into the prompt

QUESTIONS: list[tuple[str, str]] = [  # one question per fact, (question, the words a right answer contains)
    ("What year was Odile Marchetti born? Reply with only the year.", "1958"),
    ("In which city does Odile Marchetti live? Reply with only the city.", "Varnholm"),
    ("What is Odile Marchetti's profession? Reply with only the profession.", "gardener"),
    ("What is the name of Odile Marchetti's pet? Reply with only the name.", "Pell"),
    ("In what year was Tessel Works founded? Reply with only the year.", "1911"),
    ("Who founded Tessel Works? Reply with only the name.", "Mira Kessel"),
    ("Where is Tessel Works headquartered? Reply with only the city.", "Dravenport"),
    ("What does Tessel Works make? Reply with only the product.", "sailboats"),
]

Mode = Callable[[LoadedModel, str, GenerationConfig], Generated]


@dataclass
class Row:
    """One answer: which mode, what it said, whether it contains the expected word, and its cost."""

    mode: str
    question: str
    answer: str
    correct: bool
    seconds: float
    prompt_tokens: int


def in_context(base: LoadedModel, question: str, config: GenerationConfig) -> Generated:
    """The documents in the prompt, then the question (what RAG does)."""
    return generate(base.model, base.tokenizer, in_context_prompt(DOCUMENT, question), config=config)


def closed_book(base: LoadedModel, question: str, config: GenerationConfig) -> Generated:
    """The question alone, with no adapter: what the base model knows by itself."""
    return generate(base.model, base.tokenizer, question, config=config)


def internalized(memory: LoRAMemory) -> Mode:
    """The question alone, answered by the memory: the routed documents' adapters applied."""

    def answer(base: LoadedModel, question: str, config: GenerationConfig) -> Generated:
        out = memory.ask(question, generation=config)
        return Generated(text=out.text, prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens)

    return answer


def build_memory(base: LoadedModel, hypernet_dir: Path | None, directory: Path) -> tuple[LoRAMemory, float] | None:
    """A collection in ``directory`` holding the demo documents, and the seconds ingesting took.

    ``hypernet_dir`` None means the shipped checkpoint. None when there is no trained
    checkpoint to use (:func:`~lora_memory.checkpoints.resolve_hypernet` would pick a random init).
    """
    try:
        hypernet, source = resolve_hypernet(hypernet_dir, base)
    except ModelNotFoundError:
        return None
    if source == "random":
        return None
    memory = LoRAMemory.open("demo", directory=directory, base=base, hypernet=hypernet)
    start = time.perf_counter()
    for doc_id, text in DOCUMENTS.items():
        memory.add(text, doc_id=doc_id, progress=False)
    return memory, time.perf_counter() - start


def modes(memory: LoRAMemory | None) -> list[tuple[str, Mode]]:
    """The answering modes, in display order; ``internalized`` only when there is a memory."""
    out: list[tuple[str, Mode]] = [("in context", in_context), ("closed book", closed_book)]
    if memory is not None:
        out.append(("internalized", internalized(memory)))
    return out


def run(base: LoadedModel, config: GenerationConfig, chosen: list[tuple[str, Mode]]) -> list[Row]:
    """Answer every question in every chosen mode."""
    rows = []
    for name, mode in chosen:
        for question, expected in QUESTIONS:
            start = time.perf_counter()
            out = mode(base, question, config)
            seconds = time.perf_counter() - start
            rows.append(Row(name, question, out.text.strip(), contains(out.text, expected), seconds,
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
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--hypernet", default=None, help="Doc-to-LoRA checkpoint (default: the shipped one).")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch. One is the default: on busy 2-core machines two threads "
                             "were measured over 10x slower than one for this small model.")
    args = parser.parse_args(argv if argv is not None else [])
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    base = load_base_model("embedded")
    print(f"Loaded {base.name} ({base.dtype}, {base.device}) in {time.perf_counter() - start:.1f} s")
    print(f"\nThe documents ({len(base.tokenizer(DOCUMENT).input_ids)} tokens), which the model never saw:\n")
    print(DOCUMENT)
    with tempfile.TemporaryDirectory(prefix="lora-memory-demo-") as tmp:
        built = build_memory(base, Path(args.hypernet) if args.hypernet else None, Path(tmp))
        memory = None
        if built is not None:
            memory, seconds = built
            chunks = sum(doc.n_chunks for doc in memory.list())
            adapter = memory.adapter()
            assert adapter is not None  # the demo documents were just added
            print(f"\nInternalized {len(memory)} documents ({chunks} chunks) in {seconds:.2f} s; all adapters "
                  f"together: {adapter.nbytes() / 1024:.0f} KiB. Each question gets the adapters of the "
                  f"top {memory.config.top_k} chunk(s) by BM25 routing.")
        chosen = modes(memory)
        rows = run(base, config, chosen)
        if memory is not None:
            memory.close()
    print(report(rows, [name for name, _ in chosen]))
    if built is None:
        print("\nInternalization (the documents as LoRA adapters, no document in the prompt) needs the trained\n"
              "Doc-to-LoRA hypernetwork checkpoint; this installation does not have it, so only the two\n"
              "reference modes ran.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

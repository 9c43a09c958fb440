"""Held-out evaluation of a Doc-to-LoRA hypernetwork (``lora-memory eval``).

All answers come from greedy generation, never teacher forcing:

- needle in a haystack at several lengths (multiples of the chunk length, and
  past the base model's context window) and depths: internalized answers;
- fictional-fact QA: internalized vs in-context (document in the prompt) vs
  closed-book (neither);
- the collapse diagnostics: cosine and spread between different documents' adapters;
- chunk density (``--density``): dense documents (many fact sheets back to back)
  cut at several chunk lengths, answered with the routed chunk's adapter, to show
  how many facts one rank-r chunk adapter holds.

Scoring (:mod:`~lora_memory.evaluation.scoring`): ``exact`` is a normalised string
match (case, spacing and punctuation ignored); ``contains`` accepts the answer as
whole words inside a sentence, which is fairer to the in-context baseline that
tends to answer in full sentences.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel as PydanticModel
from pydantic import Field
from tqdm.auto import tqdm

from ..adapter import LoRAAdapter
from ..base import LoadedModel
from ..chunking import Chunk, chunk_text
from ..hypernet import DocToLoRA, HypernetConfig
from ..routing import BM25Index
from ..training.d2l.baseline import distill_document
from ..training.d2l.data import Example, facts_example, needle_example
from ..training.diagnostics import adapter_spread
from .answering import greedy_answer
from .prompts import in_context_prompt
from .scoring import contains, exact_match


class EvalConfig(PydanticModel):
    """What to evaluate; defaults give the table in docs/training.md."""

    model_config = {"extra": "forbid"}

    needle_lengths: list[int] = Field(default_factory=lambda: [256, 1024, 2048, 4096, 16384, 32768],
                                      description="Haystack lengths in tokens.")
    needle_depths: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    needle_per_cell: int = Field(2, ge=1, description="Documents per (length, depth) cell.")
    facts_documents: int = Field(40, ge=1)
    seed: int = 1234
    max_new_tokens: int = 24


@dataclass
class EvalReport:
    needle: dict[int, dict[str, float]] = field(default_factory=dict)  # length -> metrics
    facts: dict[str, dict[str, float]] = field(default_factory=dict)  # setting -> metrics
    diagnostics: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_markdown(self) -> str:
        lines = ["### Needle in a haystack (internalized, greedy generation)", "",
                 "| tokens | chunks | all chunks: exact | all chunks: contains | routed chunk: exact | documents |",
                 "|---:|---:|---:|---:|---:|---:|"]
        for length, m in sorted(self.needle.items()):
            lines.append(f"| {length} | {m['chunks']:.0f} | {m['exact']:.2f} | {m['contains']:.2f} | "
                         f"{m['routed']:.2f} | {m['n']:.0f} |")
        lines += ["", "### Fictional-fact QA (held-out entities)", "",
                  "| setting | exact | contains | questions |", "|---|---:|---:|---:|"]
        for setting, m in self.facts.items():
            lines.append(f"| {setting} | {m['exact']:.2f} | {m['contains']:.2f} | {m['n']:.0f} |")
        lines += ["", "### Collapse diagnostics (facts documents)", ""]
        lines += [f"- {k}: {v:.4f}" for k, v in self.diagnostics.items()]
        lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items())]
        return "\n".join(lines)


def _score(pairs: list[tuple[str, str]]) -> dict[str, float]:
    n = len(pairs)
    return {"exact": sum(exact_match(p, a) for p, a in pairs) / n,
            "contains": sum(contains(p, a) for p, a in pairs) / n, "n": float(n)}


@dataclass
class ChunkedDocument:
    """A document cut into chunks, each chunk's adapter, and the BM25 index that routes questions among them."""

    chunks: list[Chunk]
    adapters: list[LoRAAdapter]
    index: BM25Index

    @classmethod
    @torch.no_grad()
    def encode(cls, hypernet: DocToLoRA, base: LoadedModel, text: str, chunk_tokens: int | None = None
               ) -> ChunkedDocument:
        """Chunk ``text`` (default: the hypernetwork's ``max_chunk_tokens``) and encode every chunk."""
        chunks = chunk_text(base.tokenizer, text, chunk_tokens or hypernet.config.max_chunk_tokens)
        return cls(chunks, hypernet.adapters_for_chunks(base, chunks), BM25Index([c.text for c in chunks]))

    def routed(self, question: str) -> int:
        """Index of the chunk BM25 ranks first for ``question``, as ``LoRAMemory`` routes (``top_k=1``)."""
        return self.index.top_k(question, 1)[0][0]


@torch.no_grad()
def evaluate_needle(hypernet: DocToLoRA, base: LoadedModel, config: EvalConfig, progress: bool = True
                    ) -> dict[int, dict[str, float]]:
    """Needle accuracy per length, with every chunk's adapter concatenated and with the routed chunk only.

    ``exact``/``contains``: all chunks composed (``DocToLoRA.internalize``). ``routed``:
    only the chunk BM25 ranks first for the question is applied, as ``LoRAMemory`` does
    by default (``top_k=1``).
    """
    rng = random.Random(config.seed)
    cells = [(n, d) for n in config.needle_lengths for d in config.needle_depths]
    composed: dict[int, list[tuple[str, str]]] = {}
    routed: dict[int, list[tuple[str, str]]] = {}
    n_chunks: dict[int, float] = {}
    for length, depth in tqdm(cells, desc="needle", disable=not progress):
        for _ in range(config.needle_per_cell):
            ex = needle_example(rng, "heldout", length, length, kinds=("number",), depth=depth)
            qa = ex.qa[0]
            doc = ChunkedDocument.encode(hypernet, base, ex.document)
            n_chunks[length] = float(len(doc.chunks))
            composed.setdefault(length, []).append(
                (greedy_answer(base, qa.question, hypernet.compose(doc.adapters), config.max_new_tokens), qa.answer))
            routed.setdefault(length, []).append(
                (greedy_answer(base, qa.question, doc.adapters[doc.routed(qa.question)], config.max_new_tokens),
                 qa.answer))
    return {n: {**_score(composed[n]), "routed": _score(routed[n])["exact"], "chunks": n_chunks[n]}
            for n in composed}


@torch.no_grad()
def _generate_answers(base: LoadedModel, example: Example, adapter: LoRAAdapter | None,
                      max_new_tokens: int) -> list[tuple[str, str]]:
    return [(greedy_answer(base, qa.question, adapter, max_new_tokens), qa.answer) for qa in example.qa]


@torch.no_grad()
def evaluate_facts(hypernet: DocToLoRA, base: LoadedModel, config: EvalConfig, progress: bool = True
                   ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    rng = random.Random(config.seed + 1)
    examples: list[Example] = [facts_example(rng, "heldout") for _ in range(config.facts_documents)]
    settings: dict[str, list[tuple[str, str]]] = {"internalized": [], "in-context": [], "closed-book": []}
    adapters = []
    for ex in tqdm(examples, desc="facts", disable=not progress):
        adapter = hypernet.internalize(base, ex.document)
        adapters.append(adapter)
        settings["internalized"] += _generate_answers(base, ex, adapter, config.max_new_tokens)
        settings["closed-book"] += _generate_answers(base, ex, None, config.max_new_tokens)
        settings["in-context"] += [(greedy_answer(base, in_context_prompt(ex.document, qa.question), None,
                                            config.max_new_tokens), qa.answer) for qa in ex.qa]
    return {k: _score(v) for k, v in settings.items()}, adapter_spread(adapters)


def evaluate_capacity(base: LoadedModel, config: HypernetConfig, documents: int = 5, steps: int = 30,
                      seed: int = 4321) -> dict[str, float]:
    """Rung 1 of the ladder: does a free rank-r LoRA on the same targets store one document's facts?

    Trains :func:`~lora_memory.training.d2l.baseline.distill_document` on each document and
    answers by greedy generation with the trained adapter.
    """
    rng = random.Random(seed)
    pairs, seconds = [], []
    for i in range(documents):
        ex = needle_example(rng, "heldout", 64, 256) if i % 2 == 0 else facts_example(rng, "heldout")
        with torch.enable_grad():
            result = distill_document(base, ex, config, steps=steps, lr=1e-2, seed=i)
        seconds.append(result.seconds_per_step)
        pairs += _generate_answers(base, ex, result.adapter, 24)
    return {**_score(pairs), "seconds_per_step": sum(seconds) / len(seconds), "steps": float(steps)}


@torch.no_grad()
def evaluate_density(hypernet: DocToLoRA, base: LoadedModel, chunk_lengths: list[int], documents: int = 8,
                     sheets: int = 12, seed: int = 99, max_new_tokens: int = 24, progress: bool = True
                     ) -> tuple[dict[int, dict[str, float]], float]:
    """Accuracy on dense documents by chunk length: how much one chunk adapter holds.

    Each document is ``sheets`` held-out fact sheets back to back (3-5 facts each);
    one question per sheet. Per chunk length: ``routed`` answers with the chunk BM25
    ranks first (as ``LoRAMemory`` does), ``oracle`` with the chunk whose text holds
    the answer (capacity alone, routing errors removed), ``routing`` is how often the
    two chunks agree. Also returns the base model's ``contains`` score with the whole
    document in the prompt, for reference.
    """
    rng = random.Random(seed)
    docs, facts = [], 0
    for _ in range(documents):
        parts = [facts_example(rng, "heldout") for _ in range(sheets)]  # one QA per fact of the sheet
        docs.append(("\n\n".join(p.document for p in parts), [rng.choice(p.qa) for p in parts]))
        facts += sum(len(p.qa) for p in parts)
    out: dict[int, dict[str, float]] = {}
    for length in tqdm(chunk_lengths, desc="density", disable=not progress):
        routed, oracle, agree, n_chunks = [], [], 0, 0
        for text, questions in docs:
            doc = ChunkedDocument.encode(hypernet, base, text, length)
            n_chunks += len(doc.chunks)
            for qa in questions:
                best = doc.routed(qa.question)
                holder = next((i for i, c in enumerate(doc.chunks) if contains(c.text, qa.answer)),
                              best)
                agree += best == holder
                routed.append((greedy_answer(base, qa.question, doc.adapters[best], max_new_tokens), qa.answer))
                oracle.append((greedy_answer(base, qa.question, doc.adapters[holder], max_new_tokens), qa.answer))
        n = len(routed)
        out[length] = {"routed": _score(routed)["exact"], "oracle": _score(oracle)["exact"], "routing": agree / n,
                       "chunks_per_doc": n_chunks / documents, "facts_per_chunk": facts / n_chunks,
                       "n": float(n)}
    in_context = [(greedy_answer(base, in_context_prompt(text, qa.question), None, max_new_tokens), qa.answer)
                  for text, questions in docs for qa in questions]
    return out, _score(in_context)["contains"]


def density_markdown(results: dict[int, dict[str, float]], in_context_contains: float, rank: int, sheets: int,
                     trained_tokens: int) -> str:
    """The table of :func:`evaluate_density`; lengths above ``trained_tokens`` are marked."""
    lines = [f"### Chunk density (dense documents: {sheets} fact sheets back to back, rank-{rank} chunk adapters)",
             "", f"Each document is {sheets} held-out fact sheets back to back (3-5 facts each), cut into chunks of "
             f"the given length; every chunk gets its own rank-{rank} adapter; one question per sheet. *Routed "
             "chunk*: the chunk BM25 ranks first answers, as `LoRAMemory` does by default. *Answer's chunk*: the "
             "chunk whose text holds the answer answers (routing errors removed: capacity alone).", "",
             "| chunk tokens | chunks per document | facts per chunk | routed chunk: exact | answer's chunk: exact"
             " | routing agrees | questions |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for length, m in sorted(results.items()):
        mark = " (beyond training)" if length > trained_tokens else ""
        lines.append(f"| {length}{mark} | {m['chunks_per_doc']:.1f} | {m['facts_per_chunk']:.1f} | {m['routed']:.2f} | "
                     f"{m['oracle']:.2f} | {m['routing']:.2f} | {m['n']:.0f} |")
    lines += ["", f"In context (the whole document in the prompt), contains: {in_context_contains:.2f}."]
    return "\n".join(lines)


def evaluate_hypernet(hypernet: DocToLoRA, base: LoadedModel, config: EvalConfig | None = None,
                      progress: bool = True) -> EvalReport:
    """Run the whole held-out evaluation."""
    config = config or EvalConfig()
    hypernet.eval()
    report = EvalReport()
    t0 = time.perf_counter()
    report.needle = evaluate_needle(hypernet, base, config, progress)
    t1 = time.perf_counter()
    report.facts, report.diagnostics = evaluate_facts(hypernet, base, config, progress)
    report.seconds = {"needle": t1 - t0, "facts": time.perf_counter() - t1}
    return report

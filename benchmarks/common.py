"""What every benchmark shares: settings per mode, the timing protocol, the models, test documents, results.

Timing protocol: every variant of a measurement runs in the same process, in
alternating order (forward on even runs, reversed on odd runs) after untimed
warm-up runs, so machine noise (other jobs, frequency changes) hits all variants
alike. A figure is the median of the runs, reported with its min and max.
"""

from __future__ import annotations

import logging
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel as PydanticModel
from pydantic import Field

from lora_memory.base import LoadedModel, load_base_model, resolve_dtype
from lora_memory.checkpoints import default_hypernet_dir, resolve_hypernet
from lora_memory.evaluation.machine import machine_info
from lora_memory.hypernet import DocToLoRA
from lora_memory.training.d2l.data import needle_example

if TYPE_CHECKING:
    from .rag import RagPipeline

logger = logging.getLogger(__name__)

Mode = Literal["full", "quick", "smoke"]
# the library's default on this CPU (dtype "auto", resolve_dtype): bf16 with AMX or AVX512-BF16 (2.5-3x faster than
# fp32 there), fp32 where bf16 is emulated (5x slower than fp32 on an AVX2-only CPU)
DTYPE = "bf16" if resolve_dtype("auto", torch.device("cpu")) is torch.bfloat16 else "fp32"


class BenchSettings(PydanticModel):
    """Sizes and repetitions of one benchmark run; :meth:`for_mode` gives the three presets."""

    model_config = {"extra": "forbid"}

    mode: Mode = "full"
    runs: int = Field(5, ge=1, description="Timed runs per figure (the median is reported).")
    warmup: int = Field(1, ge=0, description="Untimed runs before timing.")
    threads: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, description="torch intra-op threads.")
    ingest_lengths: list[int] = Field(default_factory=lambda: [256, 1024, 4096, 16384, 32768])
    answer_lengths: list[int] = Field(default_factory=lambda: [1024, 4096, 16384])
    footprint_lengths: list[int] = Field(default_factory=lambda: [256, 1024, 4096, 16384, 32768],
                                         description="Lengths of the (computed) adapter vs KV-cache table.")
    rss_lengths: list[int] = Field(default_factory=lambda: [4096, 16384], description="Lengths of the RSS probes.")
    rss_workers: int = Field(1, ge=1, description="RSS probes run at once (each measures only itself).")
    needle_lengths: list[int] = Field(default_factory=lambda: [256, 1024, 4096])
    needle_depths: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    facts_documents: int = Field(20, ge=1)
    facts_questions: int = Field(0, ge=0, description="Questions per facts document (0: all).")
    cache_lengths: list[int] = Field(default_factory=lambda: [4096, 16384])
    max_new_tokens: int = Field(16, ge=1, description="Greedy tokens per answer, the same for every variant.")
    accuracy_max_new_tokens: int = Field(24, ge=1, description="Greedy tokens per answer in the accuracy runs.")
    distill_steps: int = Field(5, ge=1, description="Context-distillation steps actually timed.")
    distill_reference_steps: int = Field(300, ge=1, description="Steps of the reference's per-document baseline.")
    rag_top_k: int = Field(3, ge=1, description="Chunks RAG puts into the prompt.")
    serve_clients: list[int] = Field(default_factory=lambda: [1, 4, 8, 16], description="Concurrent clients "
                                     "of the serving load benchmark.")
    serve_min_requests: int = Field(8, ge=1, description="Requests per level: max(this, 2 x clients).")
    serve_max_tokens: int = Field(32, ge=1, description="max_tokens of every served request.")
    serve_level_time_s: float = Field(180.0, gt=0, description="No new request after this long at one level.")
    corpus_documents: int = Field(10_033, ge=1, description="Wikipedia summaries of the corpus benchmark.")
    corpus_needles: int = Field(50, ge=1, description="Needles inserted into the corpus benchmark's articles.")
    seed: int = 20240

    @classmethod
    def for_mode(cls, mode: Mode, threads: int | None = None) -> BenchSettings:
        presets: dict[str, dict[str, Any]] = {
            "full": {},
            "quick": dict(ingest_lengths=[256, 1024, 4096], answer_lengths=[1024, 4096], rss_lengths=[4096],
                          needle_lengths=[256, 1024], facts_documents=10, cache_lengths=[4096],
                          corpus_documents=1000),
            "smoke": dict(runs=1, warmup=0, threads=1, ingest_lengths=[64, 300], answer_lengths=[128],
                          footprint_lengths=[256, 1024], rss_lengths=[128], rss_workers=4, needle_lengths=[64],
                          needle_depths=[0.5], facts_documents=1, facts_questions=1, cache_lengths=[300],
                          max_new_tokens=4, accuracy_max_new_tokens=4, distill_steps=1, serve_clients=[1, 2],
                          serve_min_requests=2, serve_max_tokens=4, serve_level_time_s=30.0,
                          corpus_documents=30, corpus_needles=4),
        }
        values = {"mode": mode, **presets[mode]}
        if threads is not None:
            values["threads"] = threads
        return cls(**values)


# ------------------------------------------------------------------ timing
@dataclass
class Stats:
    """Median, min and max of repeated measurements (seconds unless said otherwise)."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def scaled(self, factor: float) -> Stats:
        return Stats([s * factor for s in self.samples])

    def fmt(self, unit: str = "s") -> str:
        """``median (min-max)`` with 3 significant digits."""
        return f"{_sig(self.median)} {unit} ({_sig(self.min)}-{_sig(self.max)})"

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max, "samples": self.samples}


def _sig(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def measure(variants: dict[str, Callable[[], Any]], runs: int, warmup: int,
            self_timed: Collection[str] = ()) -> dict[str, Stats]:
    """Time each variant ``runs`` times, alternating the order between runs, after ``warmup`` untimed runs.

    Variants named in ``self_timed`` return their own measurement in seconds
    (e.g. a mean step time); the others are timed from outside.
    """
    names = list(variants)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for run in range(warmup + runs):
        order = names if run % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            value = variants[name]()
            elapsed = time.perf_counter() - start
            if run >= warmup:
                samples[name].append(float(value) if name in self_timed else elapsed)
    return {n: Stats(s) for n, s in samples.items()}


# --------------------------------------------------------------- machine
def bench_machine_info(settings: BenchSettings) -> dict[str, Any]:
    """What the numbers were measured on (:func:`~lora_memory.evaluation.machine.machine_info`) and how."""
    return {**machine_info(), "dtype": DTYPE, "device": "cpu", "mode": settings.mode, "runs": settings.runs}


# ---------------------------------------------------------------- models
@dataclass
class Context:
    """The loaded models and settings every benchmark receives."""

    settings: BenchSettings
    base: LoadedModel
    hypernet: DocToLoRA
    hypernet_trained: bool
    rag: RagPipeline

    @property
    def hypernet_label(self) -> str:
        if self.hypernet_trained:
            return f"the shipped trained checkpoint ({default_hypernet_dir().name})"
        return ("a random-init hypernetwork of the shipped config (no trained checkpoint in this checkout; "
                "its cost is identical, its answers carry no document knowledge)")


def load_hypernet(base: LoadedModel, seed: int) -> tuple[DocToLoRA, bool]:
    """The shipped checkpoint when this checkout has one (True), else a seeded random init of the default config.

    The random init has the checkpoint's shapes, so it costs the same time and memory.
    A checkpoint that does not fit the base model raises: never measure a stand-in silently.
    """
    hypernet, source = resolve_hypernet(None, base, seed, fall_back=False)
    return hypernet, source == "shipped"


def load_context(settings: BenchSettings) -> Context:
    """Load the embedded base model (bf16, CPU), the hypernetwork and the RAG baseline's embedder."""
    from .minilm import MiniLMEmbedding  # LlamaIndex is imported only where RAG runs (not in most RSS probes)
    from .rag import RagPipeline

    base = load_base_model("embedded", dtype=DTYPE, device="cpu")
    hypernet, trained = load_hypernet(base, settings.seed)
    rag = RagPipeline(base, MiniLMEmbedding(), chunk_tokens=hypernet.config.max_chunk_tokens,
                      top_k=settings.rag_top_k)
    return Context(settings, base, hypernet, trained, rag)


# ------------------------------------------------------------- documents
@dataclass
class TimingDocument:
    """A needle-in-a-haystack document cut to a target length, with its question and answer."""

    text: str
    n_tokens: int
    question: str
    answer: str
    example: Any = field(repr=False)


def timing_document(base: LoadedModel, n_tokens: int, seed: int) -> TimingDocument:
    """A held-out haystack of about ``n_tokens`` tokens, its needle at half depth (so trimming keeps it)."""
    rng = random.Random(seed * 1_000_003 + n_tokens)
    over = math.ceil(n_tokens * 1.15) + 16
    example = needle_example(rng, "heldout", over, over, depth=0.5)
    ids = base.tokenizer(example.document, add_special_tokens=False).input_ids[:n_tokens]
    text = base.tokenizer.decode(ids)
    example.document = text
    actual = len(base.tokenizer(text, add_special_tokens=False).input_ids)
    qa = example.qa[0]
    return TimingDocument(text, actual, qa.question, qa.answer, example)


# --------------------------------------------------------------- results
@dataclass
class Target:
    """A goal the benchmark checks (never a unit test): ``measured`` against ``goal`` in the given direction."""

    name: str
    goal: str
    measured: float | None
    passed: bool | None
    detail: str = ""
    shown: str | None = None  # how ``measured`` is written in the report; None: as a ratio ("1.23x")

    @classmethod
    def at_most(cls, name: str, goal: str, measured: float | None, limit: float, detail: str = "",
                shown: str | None = None) -> Target:
        return cls(name, goal, measured, None if measured is None else measured <= limit, detail, shown)

    @classmethod
    def at_least(cls, name: str, goal: str, measured: float | None, limit: float, detail: str = "",
                 shown: str | None = None) -> Target:
        return cls(name, goal, measured, None if measured is None else measured >= limit, detail, shown)


@dataclass
class Section:
    """One benchmark's markdown, figures (file names under img/), targets and raw data."""

    title: str
    lines: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    key: str = ""  # the benchmark's name in ``benchmarks.run.BENCHMARKS``, set by the runner


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table; the first column left-aligned, the rest right-aligned."""
    align = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(r) + " |" for r in rows)]

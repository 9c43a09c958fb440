"""Accuracy and answer latency as a collection grows: ``python -m lora_memory.evaluation.collections``.

For each collection size N (default 1, 10 and 100 documents) a collection holds
N - 1 distractors and, one at a time, a target document; every question about the
target is asked through memories that read the same collection with different
composition settings: ``all`` (every chunk's adapter concatenated), ``top-k``
(the k chunks BM25 picks for the question) and ``top-k+rank-r`` (those, compressed
by SVD). A second experiment asks about one long needle document alone: every
chunk against the routed ones.

Targets are held-out needle and fictional-fact documents; distractors come from
the same families but never hold a magic number or a target's entity, so each
question keeps one answer. Collections are built by :class:`lora_memory.LoRAMemory`
in a throwaway ``LORA_MEMORY_HOME``, so ingestion, caching, routing and
composition take the library's real path; every size's distractors are a prefix
of one list, encoded once (the adapter cache is shared).

Writes ``<out>/collections.md``, ``<out>/collections.json`` (every answer) and
``<out>/img/collections.png``.

Usage::

    python -m lora_memory.evaluation.collections                          # ~10 min on one core
    python -m lora_memory.evaluation.collections --quick --out /tmp/eval  # sizes 1 and 10, a smoke test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from pydantic import BaseModel as PydanticModel
from pydantic import Field
from tqdm.auto import tqdm

from .. import paths
from ..base import LoadedModel, load_base_model
from ..checkpoints import default_hypernet_dir, resolve_hypernet
from ..config import MemoryConfig
from ..generation import GenerationConfig
from ..hypernet import DocToLoRA
from ..memory import LoRAMemory
from ..training.d2l.data import QA, Example, facts_example, needle_example
from .machine import machine_info, machine_line
from .scoring import contains, exact_match

logger = logging.getLogger(__name__)

TARGET_ID = "target"
DISTRACTOR_NEEDLES = ("code", "name", "date")  # every needle kind but the targets' "number"
REPORT_NAME = "collections.md"
RESULTS_NAME = "collections.json"
PLOT_NAME = "img/collections.png"


class CollectionEvalConfig(PydanticModel):
    """What to evaluate; the defaults give the tables in docs/collections.md (about 10 minutes on one core)."""

    model_config = {"extra": "forbid"}

    sizes: list[int] = Field(default_factory=lambda: [1, 10, 100], description="Documents per collection.")
    needle_targets: int = Field(12, ge=0, description="Needle target documents (one question each).")
    facts_targets: int = Field(6, ge=0, description="Fact target documents.")
    facts_questions: int = Field(2, ge=1, description="Questions asked per fact document.")
    needle_tokens: tuple[int, int] = Field((64, 512), description="Haystack length range in tokens.")
    long_needle_tokens: list[tuple[int, int]] = Field(
        default_factory=lambda: [(700, 1000), (1500, 2000)],
        description="Length ranges of the single long needle documents (every chunk vs routed).")
    long_targets: int = Field(8, ge=0, description="Long needle documents per length range.")
    top_k: int = Field(1, ge=1, description="Chunks the 'routed' setting applies (the memory's default).")
    wide_top_ks: list[int] = Field(default_factory=lambda: [2, 4], min_length=1,
                                   description="Chunks the wider routed settings apply; the first is also compressed.")
    max_rank: int = Field(16, ge=1, description="Rank the compressed setting keeps.")
    max_new_tokens: int = Field(16, ge=1)
    seed: int = 7

    @classmethod
    def quick(cls) -> CollectionEvalConfig:
        """Sizes 1 and 10, three questions, one long document: a smoke test of the whole path."""
        return cls(sizes=[1, 10], needle_targets=2, facts_targets=1, facts_questions=1,
                   long_needle_tokens=[(300, 400)], long_targets=1)

    def settings(self) -> dict[str, dict[str, int | None]]:
        """Setting name -> the MemoryConfig fields it pins."""
        settings: dict[str, dict[str, int | None]] = {"all": {"top_k": None, "max_rank": None}}
        for k in [self.top_k, *self.wide_top_ks]:
            settings[f"top-{k}"] = {"top_k": k, "max_rank": None}
        k = self.wide_top_ks[0]
        settings[f"top-{k}+rank-{self.max_rank}"] = {"top_k": k, "max_rank": self.max_rank}
        return settings


@dataclasses.dataclass
class Trial:
    """One question answered in one setting at one collection size."""

    size: int
    chunks: int  # distinct chunks in the collection
    setting: str
    family: str
    question: str
    answer: str
    prediction: str
    exact: bool
    contains: bool
    hit: bool  # the target document was among the applied chunks
    seconds: float  # compose + generate
    compose_seconds: float
    rank: int
    adapter_bytes: int


# ------------------------------------------------------------------ documents
def make_documents(config: CollectionEvalConfig) -> tuple[list[Example], list[Example]]:
    """The targets and ``max(sizes) - 1`` distractors (alternately needles of other kinds and fact documents)."""
    rng = random.Random(config.seed)
    lo, hi = config.needle_tokens
    targets = [needle_example(rng, "heldout", lo, hi, kinds=("number",)) for _ in range(config.needle_targets)]
    targets += [facts_example(rng, "heldout", questions=config.facts_questions) for _ in range(config.facts_targets)]
    entities = {t.info["entity"] for t in targets if t.kind == "facts"}
    distractors: list[Example] = []
    while len(distractors) < max(config.sizes) - 1:
        if len(distractors) % 2 == 0:
            distractors.append(needle_example(rng, "heldout", lo, hi, kinds=DISTRACTOR_NEEDLES))
            continue
        doc = facts_example(rng, "heldout")
        if doc.info["entity"] not in entities:  # a second document about the same entity would be ambiguous
            entities.add(doc.info["entity"])
            distractors.append(doc)
    return targets, distractors


# ----------------------------------------------------------------- evaluation
def evaluate(base: LoadedModel, hypernet: DocToLoRA, config: CollectionEvalConfig,
             progress: bool = True) -> dict[str, list[Trial]]:
    """Both experiments, in a temporary home: ``"sizes"`` (the collection grows) and, per length range
    ``"lo-hi"``, one long needle document answered with every chunk or with the routed ones.
    """
    generation = GenerationConfig(max_new_tokens=config.max_new_tokens)
    settings = config.settings()
    targets, distractors = make_documents(config)
    long_settings = {name: v for name, v in settings.items() if v["max_rank"] is None}
    rng = random.Random(config.seed + 1)
    with paths.temporary_home(prefix="lora-memory-eval-"):
        results = {"sizes": _run(base, hypernet, settings, generation, targets, distractors, config.sizes,
                                 "size", progress)}
        for lo, hi in config.long_needle_tokens:
            docs = [needle_example(rng, "heldout", lo, hi, kinds=("number",)) for _ in range(config.long_targets)]
            results[f"{lo}-{hi}"] = _run(base, hypernet, long_settings, generation, docs, [], [1], f"long-{lo}",
                                         progress)
    return results


def _run(base: LoadedModel, hypernet: DocToLoRA, settings: dict[str, dict[str, int | None]],
         generation: GenerationConfig, targets: list[Example], distractors: list[Example], sizes: list[int],
         label: str, progress: bool) -> list[Trial]:
    """For each size: a collection of ``size - 1`` distractors; add each target, ask its questions, delete it."""
    trials: list[Trial] = []
    for size in sizes:
        memories = {name: LoRAMemory.open(f"{label}-{size}", base=base, hypernet=hypernet,
                                          config=MemoryConfig(**fields, generation=generation))
                    for name, fields in settings.items()}
        writer = memories["all"]
        start = time.perf_counter()
        writer.add_documents([(d.document, f"distractor-{i:03d}", {"kind": d.kind})
                              for i, d in enumerate(distractors[:size - 1])])
        logger.info("%s %d: %d distractors ingested in %.1f s", label, size, size - 1, time.perf_counter() - start)
        for target in tqdm(targets, desc=f"{label} {size}", disable=not progress):
            writer.add_documents([(target.document, TARGET_ID, {"kind": target.kind})])
            chunks = len(writer.collection.chunk_checksums())
            for qa in target.qa:
                trials += [_ask(memory, name, size, chunks, target.kind, qa) for name, memory in memories.items()]
            writer.delete(TARGET_ID)
        for memory in memories.values():
            memory.close()
    return trials


def _ask(memory: LoRAMemory, setting: str, size: int, chunks: int, family: str, qa: QA) -> Trial:
    answer = memory.ask(qa.question)
    adapter = memory.adapter(qa.question)  # the composer's cached adapter: what was applied
    return Trial(size=size, chunks=chunks, setting=setting, family=family, question=qa.question, answer=qa.answer,
                 prediction=answer.text, exact=exact_match(answer.text, qa.answer),
                 contains=contains(answer.text, qa.answer),
                 hit=any(s.doc_id == TARGET_ID for s in answer.sources), seconds=answer.timings["total"],
                 compose_seconds=answer.timings["compose"], rank=answer.adapter_rank,
                 adapter_bytes=adapter.nbytes() if adapter is not None else 0)


# -------------------------------------------------------------------- summary
def summarize(trials: list[Trial]) -> list[dict[str, float | int | str]]:
    """One row per (size, setting): accuracies by family, router hit rate, median latency and adapter size."""
    rows = []
    for size, setting in dict.fromkeys((t.size, t.setting) for t in trials):
        group = [t for t in trials if (t.size, t.setting) == (size, setting)]
        row: dict[str, float | int | str] = {"size": size, "setting": setting, "questions": len(group)}
        for family in ("needle", "facts", "all"):
            part = [t for t in group if family in ("all", t.family)]
            row[f"{family}_exact"] = _mean([t.exact for t in part])
            row[f"{family}_contains"] = _mean([t.contains for t in part])
        row["hit"] = _mean([t.hit for t in group])
        for key in ("seconds", "compose_seconds", "chunks", "rank", "adapter_bytes"):
            row[key] = statistics.median(getattr(t, key) for t in group)
        rows.append(row)
    return rows


def _mean(values: list[bool]) -> float:
    return sum(values) / len(values) if values else float("nan")


def targets_check(rows: list[dict]) -> list[str]:
    """The issue's targets, measured: routed accuracy at the largest size vs one document, and latency growth."""
    by = {(r["size"], r["setting"]): r for r in rows}
    smallest, largest = min(r["size"] for r in rows), max(r["size"] for r in rows)
    single = by[(smallest, "all")]["all_exact"]
    lines = []
    for setting in dict.fromkeys(r["setting"] for r in rows if r["setting"] != "all"):
        acc = by[(largest, setting)]["all_exact"]
        latency = by[(largest, setting)]["seconds"] / by[(smallest, setting)]["seconds"]
        verdict = "met" if acc >= 0.9 * single else "**not met**"
        lines.append(f"- `{setting}`: exact {acc:.2f} at {largest} documents vs {single:.2f} for the single "
                     f"document with every chunk (within 10%: {verdict}); median answer latency x{latency:.2f} "
                     f"from {smallest} to {largest} documents")
    return lines


# --------------------------------------------------------------------- output
_ABOUT = """\
Each collection holds the target plus size - 1 distractors, which come from the same families: needle
haystacks whose needle is a code, a name or a date (never a magic number), and fact documents about other
fictional entities, so every question still has exactly one answer. Targets are held-out needle documents
({needles} questions, {lo}-{hi} tokens) and fact documents ({facts} questions); greedy decoding of at most
{new} tokens. Settings: `all` concatenates every chunk's adapter (the hypernetwork's shared bias counted
once), `top-k` applies the k chunks whose text best matches the question (BM25), `+rank-r` compresses that
adapter to rank r (SVD). *Hit*: how often the target document was among the applied chunks. Latency: the
median of compose + generate per answer (answers stop early at end of turn, so wrong answers that run to the
token limit take longer). Adapter MB: the applied adapter's tensors.
"""

_DEFAULTS = """\
## Defaults and why

`MemoryConfig()` routes: `top_k={top_k}`, `max_rank={max_rank}`. Concatenated adapters interfere: the
hypernetwork is trained on single documents of a few chunks, and every further chunk, above all one of an
unrelated document, adds noise to the answer. The tables above are the evidence: `all` against `top-{top_k}`
at every size, and, for one long document, every chunk against the routed one. Compression is off by default
because a routed adapter is already small; `max_rank` bounds the bytes and the hook cost when `top_k` is large
or None. Without a question (`adapter()`, `export_peft`) every chunk is applied. Not measured here: questions
whose answer needs several chunks; `top_k=None` or a larger `top_k` serves those.

The router is BM25 over the chunk text stored at ingest: it put the target among the applied chunks for
{hit:.0%} of the questions at worst (any routed setting and size), which leaves a second router (on the
hypernetwork encoder's pooled states) nothing to win on these tasks, so none was added.

Reproduce: `python -m lora_memory.evaluation.collections` (add `--hypernet DIR` for another checkpoint, `--quick`
for a smoke run at sizes 1 and 10).
"""


def _row(r: dict, first: str) -> str:
    def pair(family: str) -> str:  # "-" for a family with no question in this row
        exact, hit = r[f"{family}_exact"], r[f"{family}_contains"]
        return "-" if exact != exact else f"{exact:.2f} / {hit:.2f}"

    return (f"| {first} | {r['chunks']:.0f} | {r['setting']} | {pair('needle')} | {pair('facts')} | "
            f"{r['all_exact']:.2f} | {r['hit']:.2f} | {r['seconds']:.2f} | {r['compose_seconds']:.3f} | "
            f"{r['rank']:.0f} | {r['adapter_bytes'] / 2**20:.2f} |")


_HEADER = ["| {first} | chunks | setting | needle exact / contains | facts exact / contains | all exact | hit | "
           "median answer s | median compose s | rank | adapter MB |",
           "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]


def render(summaries: dict[str, list[dict]], machine: dict[str, str], command: str, checkpoint: str,
           config: CollectionEvalConfig, seconds: float) -> str:
    """The markdown report: the size table, the issue's targets, the long-document table, the defaults."""
    defaults = MemoryConfig()
    sizes = summaries["sizes"]
    lines = [
        "# Many-document collections: routing and a rank budget", "",
        f"Generated by `{command}` in {seconds / 60:.1f} min on {machine_line(machine)}, "
        f"{time.strftime('%Y-%m-%d')}. Hypernetwork: {checkpoint}. Base model: {machine['base']} "
        f"({machine['dtype']}).", "",
        _ABOUT.format(needles=config.needle_targets, lo=config.needle_tokens[0], hi=config.needle_tokens[1],
                      facts=config.facts_targets * config.facts_questions, new=config.max_new_tokens),
        "## Accuracy, latency and adapter size against collection size", "",
        _HEADER[0].format(first="documents"), _HEADER[1], *(_row(r, str(r["size"])) for r in sizes), "",
        "Targets from the issue (routed accuracy at the largest size within 10% of one document's, latency flat):",
        "", *targets_check(sizes), "", f"![accuracy and latency against collection size]({PLOT_NAME})", "",
        "## One long document: every chunk or the routed ones", "",
        f"A collection holding a single needle document ({config.long_targets} documents per length range).", "",
        _HEADER[0].format(first="tokens"), _HEADER[1],
        *(_row(r, key) for key, rows in summaries.items() if key != "sizes" for r in rows), "",
        _DEFAULTS.format(top_k=defaults.top_k, max_rank=defaults.max_rank,
                         hit=min(r["hit"] for r in sizes if r["setting"] != "all")),
    ]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Exact-match accuracy per family and median latency against collection size, one line per setting."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("the plot needs matplotlib: pip install 'lora-memory[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("needle_exact", "needle: exact match"), ("facts_exact", "facts: exact match"),
              ("seconds", "median answer latency (s)")]
    for ax, (key, title) in zip(axes, panels):
        for i, setting in enumerate(dict.fromkeys(r["setting"] for r in rows)):
            mine = [r for r in rows if r["setting"] == setting]
            ax.plot([r["size"] for r in mine], [r[key] for r in mine], marker="os^v"[i % 4],
                    linestyle=("-", "--", ":", "-.")[i % 4], markersize=9 - 2 * (i % 4),
                    label=setting)  # shrinking markers keep overlapping lines visible
        ax.set_xscale("log")
        ax.set_xlabel("documents in the collection")
        ax.set_title(title)
        if key == "seconds":
            ax.set_ylim(bottom=0)
        else:
            ax.set_ylim(-0.05, 1.05)
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict[str, list[Trial]], out: Path, machine: dict[str, str], command: str,
                  checkpoint: str, config: CollectionEvalConfig, seconds: float) -> Path:
    """Write the report, every answer (JSON) and the plot under ``out``; returns the report's path."""
    summaries = {key: summarize(trials) for key, trials in results.items()}
    out.mkdir(parents=True, exist_ok=True)
    plot(summaries["sizes"], out / PLOT_NAME)
    (out / RESULTS_NAME).write_text(json.dumps(
        {"config": config.model_dump(mode="json"), "machine": machine, "summary": summaries,
         "trials": {key: [dataclasses.asdict(t) for t in trials] for key, trials in results.items()}}, indent=1))
    report = out / REPORT_NAME
    report.write_text(render(summaries, machine, command, checkpoint, config, seconds))
    return report


# ------------------------------------------------------------------------ CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lora_memory.evaluation.collections", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="sizes 1 and 10, three questions, one long document (a smoke test)")
    parser.add_argument("--hypernet", type=Path, default=None,
                        help="Doc-to-LoRA checkpoint directory (default: the shipped checkpoint)")
    parser.add_argument("--base", default="embedded", help="base model (default: embedded)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="output directory (default: docs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    config = CollectionEvalConfig.quick() if args.quick else CollectionEvalConfig()
    base = load_base_model(args.base)
    hypernet, source = resolve_hypernet(args.hypernet, base)
    if source == "path":
        checkpoint = f"`{args.hypernet}` (fingerprint {hypernet.fingerprint})"
    elif source == "shipped":
        checkpoint = f"the shipped checkpoint `src/lora_memory/checkpoints/{default_hypernet_dir().name}`"
    else:
        checkpoint = "**a random initialisation** (no trained checkpoint found): the accuracies mean nothing"
    start = time.perf_counter()
    results = evaluate(base, hypernet, config, progress=True)
    command = "python -m lora_memory.evaluation.collections " + " ".join(argv if argv is not None else sys.argv[1:])
    report = write_outputs(results, args.out, machine_info(base), command.strip(), checkpoint, config,
                           time.perf_counter() - start)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

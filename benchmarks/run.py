"""Run the benchmarks and write ``<out>/benchmarks.md``, ``<out>/benchmarks.json`` and ``<out>/img/*.png``.

Usage::

    python -m benchmarks.run            # full sizes (make bench)
    python -m benchmarks.run --quick    # 256-4K tokens (make bench-quick)
    python -m benchmarks.run --smoke --out /tmp/bench   # tiny sizes, one run: checks the code, not the numbers
    python -m benchmarks.run --only cache    # re-measure one benchmark, keep the others' sections

Each section of the report says which command measured it, when, and how long it
took. ``--only`` keeps the sections of the other benchmarks from the previous
report in ``--out`` when that report was made in the same mode.

Speed targets are checked here and reported as PASS/MISS; they are never unit tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lora_memory.evaluation.machine import load_average

from . import accuracy, answer_latency, cache_reuse, corpus_scale, footprint, ingest_cost, serving_load
from .common import BenchSettings, Context, Section, Target, bench_machine_info, load_context, md_table

logger = logging.getLogger("benchmarks")

BENCHMARKS: dict[str, Callable[[Context, Path], Section]] = {
    "ingest": ingest_cost.run,
    "latency": answer_latency.run,
    "memory": footprint.run,
    "accuracy": accuracy.run,
    "cache": cache_reuse.run,
    "serving": serving_load.run,
    "corpus": corpus_scale.run,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="documents of 256-4K tokens only")
    size.add_argument("--smoke", action="store_true", help="tiny sizes and one run: checks that everything works")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="output directory (default: docs)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: all cores; 1 with --smoke)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}; the other sections of a previous "
                             "report of the same mode in --out are kept")
    return parser.parse_args(argv)


def _ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}x" if value >= 100 else f"{value:.2f}x"


def _verdict(target: Target) -> str:
    return {True: "PASS", False: "**MISS**", None: "n/a"}[target.passed]


def render(settings: BenchSettings, machine: dict, ctx: Context, sections: list[Section], command: str,
           seconds: float) -> str:
    """The whole markdown report."""
    targets = [t for sec in sections for t in sec.targets]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {datetime.date.today().isoformat()} ({seconds / 60:.1f} min; each section "
        "names the run that measured it)"
        + (" (**smoke run: tiny sizes, one run; the numbers mean nothing**)" if settings.mode == "smoke" else "")
        + ". Internalization (a Doc-to-LoRA adapter, question alone in the prompt) against in-context "
          "(document in the prompt), RAG (top-k chunks in the prompt) and per-document context distillation, "
          "on the embedded SmolLM2-135M-Instruct.",
        "",
        f"Every timing is the median of {settings.runs} runs with (min-max), the variants of a measurement "
        "alternated in one process (order reversed every other run) after "
        f"{settings.warmup} untimed warm-up run(s) of every variant at the first length, so noise hits them "
        f"equally. Hypernetwork: {ctx.hypernet_label}.",
        "",
        "## Machine",
        "",
        *md_table(["", "value"], [[k, f"{v}"] for k, v in machine.items()]),
        "",
        "## Targets",
        "",
        "Held by this benchmark, not by the tests.",
        "",
        *md_table(["target", "goal", "measured", "result", "detail"],
                  [[t.name, t.goal, t.shown or _ratio(t.measured), _verdict(t), t.detail] for t in targets]),
        "",
    ]
    for sec in sections:
        lines += [f"## {sec.title}", "", *sec.lines, ""]
    lines += ["## Reproduce", "", "```", "make bench         # python -m benchmarks.run",
              "make bench-quick   # python -m benchmarks.run --quick",
              'make bench BENCH_ARGS="--only cache"   # re-measure one section, keep the others', "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    settings = BenchSettings.for_mode(mode, threads=args.threads)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        raise SystemExit(f"--only: unknown benchmarks {sorted(unknown)}; choose from {list(BENCHMARKS)}")
    torch.set_num_threads(settings.threads)
    img = args.out / "img"
    img.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    ctx = load_context(settings)
    machine = bench_machine_info(settings)
    command = "python -m benchmarks.run" + {"full": "", "quick": " --quick", "smoke": " --smoke"}[mode]
    if set(chosen) != set(BENCHMARKS):
        command += f" --only {','.join(chosen)}"
    sections = previous_sections(args.out, mode, keep=set(BENCHMARKS) - set(chosen))
    failed = False
    for name in chosen:
        logger.info("benchmark %s (%s mode, %d threads)", name, mode, settings.threads)
        began = time.perf_counter()
        try:
            section = BENCHMARKS[name](ctx, img)
        except Exception as exc:  # keep the other benchmarks' results; the exit status says it failed
            logger.exception("benchmark %s failed", name)
            section = Section(f"{name}: FAILED", [f"`{type(exc).__name__}: {exc}`"])
            failed = True
        minutes = (time.perf_counter() - began) / 60
        section.key = name
        section.lines[:0] = [f"*Measured by `{command}` on {datetime.date.today().isoformat()} in {minutes:.1f} min, "
                             f"{settings.threads} torch thread(s), load average {load_average()} at the end.*", ""]
        sections[name] = section
        logger.info("benchmark %s done in %.1f min", name, minutes)
        machine["load_average_at_end"] = load_average()
        ordered = [sections[n] for n in BENCHMARKS if n in sections]
        write_report(args.out, settings, machine, ctx, ordered, command, time.perf_counter() - start)
    logger.info("wrote %s and %d figures in %s", args.out / "benchmarks.md",
                sum(len(sec.figures) for sec in sections.values()), img)
    return 1 if failed else 0


def previous_sections(out: Path, mode: str, keep: set[str]) -> dict[str, Section]:
    """The sections named in ``keep`` from the report in ``out``, if it exists and was made in ``mode``."""
    path = out / "benchmarks.json"
    if not keep or not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    if raw.get("settings", {}).get("mode") != mode:
        logger.warning("%s was made in another mode: its sections are not kept", path)
        return {}
    kept = {}
    for sec in raw.get("report", []):
        if sec.get("key") in keep:
            targets = [Target(**t) for t in sec["targets"]]
            kept[sec["key"]] = Section(sec["title"], sec["lines"], sec["figures"], targets, sec["data"], sec["key"])
    return kept


def write_report(out: Path, settings: BenchSettings, machine: dict, ctx: Context, sections: list[Section],
                 command: str, seconds: float) -> None:
    """Write (or rewrite, after each benchmark) ``benchmarks.md`` and ``benchmarks.json``."""
    (out / "benchmarks.md").write_text(render(settings, machine, ctx, sections, command, seconds))
    raw = {"machine": machine, "settings": settings.model_dump(), "hypernet_trained": ctx.hypernet_trained,
           "targets": [t.__dict__ for sec in sections for t in sec.targets],
           "sections": {sec.title: sec.data for sec in sections},
           "report": [{**sec.__dict__, "targets": [t.__dict__ for t in sec.targets]} for sec in sections]}
    (out / "benchmarks.json").write_text(json.dumps(raw, indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark 6: ``lora-memory serve`` under concurrent load, batched decoding vs the serialized path.

Four collections (one fact sheet each) are served twice in one process, on two
loopback ports, by the same code with two schedulers: **batched** (continuous
batching, up to 16 rows a step) and **serialized** (``max_batch_size=1``: one
request at a time in arrival order, what the per-model lock gave before). A load
generator (asyncio + httpx, 127.0.0.1 only) runs 1, 4, 8 and 16 concurrent clients;
each client sends non-streaming chat completions (questions cycling over the four
collections, greedy, ``max_tokens`` fixed) until the level's request budget is spent
or its time limit passes. The two servers take turns at each level (order reversed
every other level), so load from other jobs on the machine hits both alike.

Before that, the single-request latency of the scheduler (batch of one) is timed
against :func:`lora_memory.generation.generate` (the library's path) on the same
routed adapter, alternated: batching must not make a lone request slower.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from lora_memory import paths
from lora_memory.config import MemoryConfig
from lora_memory.evaluation.machine import load_average
from lora_memory.generation import GenerationConfig, encode_chat, generate
from lora_memory.scheduler import DecodeRequest, Scheduler
from lora_memory.server import BackgroundServer, create_app
from lora_memory.service import MemoryService

from .common import Context, Section, Stats, Target, md_table, measure
from .plots import line_plot

BATCHED, SERIAL = "batched", "serialized"
BATCH_ROWS = 16  # max_batch_size of the batched server
TARGET_CLIENTS = 8

SHEETS = {
    "atlas": ("The Atlas project launches on March 14. Its budget is 42,000 euros. Its lead is Mira Tesk.",
              ["When does the Atlas project launch?", "Who leads the Atlas project?"]),
    "harbor": ("The Harbor cafe opens at 7 am. Its owner is Olek Varn. It serves blue tea.",
               ["When does the Harbor cafe open?", "Who owns the Harbor cafe?"]),
    "quill": ("Quill Labs was founded in 2011 in Quenford. Its chief engineer is Ana Ruiz.",
              ["When was Quill Labs founded?", "Who is the chief engineer of Quill Labs?"]),
    "zorblat": ("The Zorblat bridge was painted teal in 1987. It is 340 metres long.",
                ["What colour is the Zorblat bridge?", "How long is the Zorblat bridge?"]),
}


@dataclass
class LoadResult:
    """One concurrency level against one server."""

    clients: int
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    failures: int = 0
    seconds: float = 0.0
    mean_batch: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    def to_dict(self) -> dict:
        return {"clients": self.clients, "requests": self.requests, "failures": self.failures,
                "seconds": self.seconds, "rps": self.rps, "tokens_per_s": self.tps, "tokens": self.tokens,
                "p50_s": self.quantile(0.5), "p95_s": self.quantile(0.95), "mean_batch": self.mean_batch,
                "latencies": self.latencies}


async def _load(url: str, clients: int, requests: int, time_limit: float, max_tokens: int,
                asks: list[tuple[str, str]]) -> LoadResult:
    """``clients`` concurrent clients sharing a budget of ``requests`` (and ``time_limit`` seconds)."""
    result = LoadResult(clients)
    issued = 0
    start = time.perf_counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=max(60.0, time_limit), limits=limits) as http:
        async def client() -> None:
            nonlocal issued
            while issued < requests and time.perf_counter() - start < time_limit:
                model, question = asks[issued % len(asks)]
                issued += 1
                began = time.perf_counter()
                try:
                    r = await http.post("/v1/chat/completions", json={
                        "model": model, "messages": [{"role": "user", "content": question}],
                        "max_tokens": max_tokens, "temperature": 0})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    result.latencies.append(time.perf_counter() - began)
                    result.tokens += r.json()["usage"]["completion_tokens"]
                else:
                    result.failures += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    result.seconds = time.perf_counter() - start
    return result


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average {load_average()}"


def _single_latency(ctx: Context, service: MemoryService, scheduler: Scheduler) -> dict[str, Stats]:
    """A lone request: generate() vs the scheduler (batch of one), same routed adapter, alternated."""
    s, base = ctx.settings, ctx.base
    model, question = next(iter(SHEETS)), next(iter(SHEETS.values()))[1][0]
    adapter, _ = service.memory(model).prepare(question)
    config = GenerationConfig(max_new_tokens=s.serve_max_tokens)
    ids = encode_chat(base.tokenizer, question)[0].tolist()
    return measure({"generate()": lambda: generate(base.model, base.tokenizer, question, adapter, config),
                    "scheduler": lambda: scheduler.generate(DecodeRequest(ids, adapter, config))},
                   s.runs, max(1, s.warmup))


def run(ctx: Context, img: Path) -> Section:
    s = ctx.settings
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    previous_home = os.environ.get(paths.HOME_ENV)
    uptime_start = _uptime()
    with tempfile.TemporaryDirectory(prefix="lora-memory-serve-bench-") as home:
        os.environ[paths.HOME_ENV] = home
        schedulers = {BATCHED: Scheduler(ctx.base.model, ctx.base.tokenizer, max_batch_size=BATCH_ROWS),
                      SERIAL: Scheduler(ctx.base.model, ctx.base.tokenizer, max_batch_size=1)}
        services = {k: MemoryService(MemoryConfig(), ctx.base, ctx.hypernet, v) for k, v in schedulers.items()}
        try:
            for name, (text, _) in SHEETS.items():
                services[BATCHED].add_text(name, text, name)
            single = _single_latency(ctx, services[BATCHED], schedulers[BATCHED])
            asks = [(name, qs[i]) for i in range(2) for name, (_, qs) in SHEETS.items()]
            results: dict[str, list[LoadResult]] = {BATCHED: [], SERIAL: []}
            with BackgroundServer(create_app(services[BATCHED])) as batched, \
                    BackgroundServer(create_app(services[SERIAL])) as serial:
                urls = {BATCHED: batched.url, SERIAL: serial.url}
                for level, clients in enumerate(s.serve_clients):
                    order = [BATCHED, SERIAL] if level % 2 == 0 else [SERIAL, BATCHED]
                    for engine in order:
                        sched = schedulers[engine]
                        steps, rows = sched.steps, sched.row_steps
                        result = asyncio.run(_load(urls[engine], clients, max(s.serve_min_requests, 2 * clients),
                                                   s.serve_level_time_s, s.serve_max_tokens, asks))
                        result.mean_batch = (sched.row_steps - rows) / max(1, sched.steps - steps)
                        results[engine].append(result)
        finally:
            for sched in schedulers.values():
                sched.close()
            for service in services.values():
                service.close()
            if previous_home is None:
                os.environ.pop(paths.HOME_ENV, None)
            else:
                os.environ[paths.HOME_ENV] = previous_home
    return _report(ctx, img, single, results, uptime_start, _uptime())


def _report(ctx: Context, img: Path, single: dict[str, Stats], results: dict[str, list[LoadResult]],
            uptime_start: str, uptime_end: str) -> Section:
    s = ctx.settings
    levels = [r.clients for r in results[BATCHED]]
    rows = []
    for b, r in zip(results[BATCHED], results[SERIAL]):
        for name, x in ((BATCHED, b), (SERIAL, r)):
            rows.append([f"{x.clients} ({name})", f"{x.requests}", f"{x.failures}", f"{x.rps:.2f}", f"{x.tps:.1f}",
                         f"{x.quantile(0.5):.2f}", f"{x.quantile(0.95):.2f}", f"{x.mean_batch:.1f}"])
        rows.append([f"{b.clients}: batched / serialized", "", "", f"{b.rps / r.rps:.2f}x" if r.rps else "n/a",
                     f"{b.tps / r.tps:.2f}x" if r.tps else "n/a", "", "", ""])
    figure = line_plot(img / "serving_throughput.png", "Serving throughput vs concurrent clients",
                       "concurrent clients", "completion tokens per second",
                       {name: (levels, [Stats([x.tps]) for x in results[name]]) for name in (BATCHED, SERIAL)},
                       log=False, note=f"4 collections, greedy, max_tokens={s.serve_max_tokens}; one run per level; "
                                       f"{s.threads} torch thread(s)")
    ratio = slow = None
    target_b = next((x for x in results[BATCHED] if x.clients == TARGET_CLIENTS), None)
    target_s = next((x for x in results[SERIAL] if x.clients == TARGET_CLIENTS), None)
    lone = next((x for x in results[BATCHED] if x.clients == 1), None)
    if target_b and target_s and target_s.rps:
        ratio = target_b.rps / target_s.rps
    if target_b and lone and lone.latencies:
        slow = target_b.quantile(0.95) / lone.quantile(0.5)
    failures = sum(x.failures for xs in results.values() for x in xs)
    lone_ratio = single["scheduler"].median / single["generate()"].median
    at = f"at {TARGET_CLIENTS} clients"
    targets = [
        Target.at_least("serving throughput, batched vs serialized", f">= 3x {at}", ratio, 3.0,
                        "" if ratio is None else f"{target_b.rps:.2f} vs {target_s.rps:.2f} requests/s"),
        Target.at_most("serving p95 latency vs single client", f"<= 3x {at}", slow, 3.0,
                       "" if slow is None else f"p95 {target_b.quantile(0.95):.2f} s at {TARGET_CLIENTS} vs "
                                               f"p50 {lone.quantile(0.5):.2f} s alone"),
        Target.at_most("failed requests under load", "0", float(failures), 0.0,
                       f"{sum(x.requests for xs in results.values() for x in xs)} requests answered"),
        Target.at_most("lone request, scheduler vs generate()", "<= 1.10x", lone_ratio, 1.10,
                       f"{single['scheduler'].fmt()} vs {single['generate()'].fmt()}"),
    ]
    lines = [
        "Machine load while measuring (`uptime`): at the start `" + uptime_start + "`, at the end `" + uptime_end
        + "`. The project machine's second core runs a training job, so the server shares the CPU.",
        "",
        *md_table(["clients (server)", "requests", "failed", "requests/s", "tokens/s", "p50 s", "p95 s",
                   "rows/step"], rows),
        "",
        f"One run per level (a request budget of max({s.serve_min_requests}, 2 x clients) and at most "
        f"{s.serve_level_time_s:.0f} s), non-streaming chat completions over HTTP on 127.0.0.1, greedy, "
        f"`max_tokens={s.serve_max_tokens}` (answers may stop earlier at end-of-sequence: tokens/s counts the "
        "tokens generated). Questions cycle over 4 collections (each its routed rank-8 chunk adapter), so "
        "every batch mixes adapters. Latency is per request, from send to the full response. *rows/step*: mean "
        "rows per decode step. Batched: up to 16 rows per step (continuous batching); serialized: the same "
        "server with `--max-batch-size 1`.",
        "",
        f"Lone request (no HTTP, the routed adapter applied, `max_new_tokens={s.serve_max_tokens}`, median of "
        f"{s.runs} alternated runs): `generate()` {single['generate()'].fmt()}, scheduler "
        f"{single['scheduler'].fmt()} ({lone_ratio:.2f}x).",
        "",
        f"![serving throughput](img/{figure.name})",
    ]
    data = {"single_request": {k: v.to_dict() for k, v in single.items()},
            "load": {k: [x.to_dict() for x in xs] for k, xs in results.items()},
            "uptime": [uptime_start, uptime_end]}
    return Section("6. Serving: batched vs serialized under concurrent clients", lines, [figure.name], targets,
                   data)

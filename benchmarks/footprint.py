"""Benchmark 3: memory. Adapter bytes vs KV-cache bytes, and each variant's peak RSS.

Sizes are computed from the model and hypernetwork configs and checked against
real objects: the KV cache per token (bf16) is ``2 (K and V) * layers * kv_heads
* head_dim * 2 bytes``, compared with a real ``past_key_values``; a chunk's adapter
is ``rank * (d_in + d_out) * target layers * 2 bytes`` in bf16 (as applied) for the
learned reader, plus, with an associative companion, ``(chunk tokens - 1) * (d_in +
d_out) * its layers * 2 bytes`` (one rank per stored token), compared with a real
one. Peak RSS is measured per variant in its own process (:mod:`benchmarks.rss_probe`),
which reports its own peak (``VmHWM``).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from lora_memory.chunking import chunk_text
from lora_memory.hypernet import HypernetConfig

from .common import Context, Section, Stats, Target, md_table, timing_document
from .plots import grouped_bars
from .rss_probe import VARIANTS

BF16 = 2  # bytes per element
REPO_ROOT = Path(__file__).resolve().parent.parent
COMBO_CHUNKS = [128, 256, 512, 1024, 2048]
COMBO_RANKS = [2, 4, 8, 16]
COMPRESSED_RANK = 64  # a MemoryConfig.max_rank budget for a whole document


def kv_bytes_per_token(model_config, element_bytes: int = BF16) -> int:
    """KV-cache bytes one token costs: K and V, every layer, every KV head (bf16 unless told)."""
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    return 2 * model_config.num_hidden_layers * model_config.num_key_value_heads * head_dim * element_bytes


def cache_nbytes(cache) -> int:
    """Bytes of every tensor held by a transformers cache object's layers."""
    return sum(v.nbytes for layer in cache.layers for v in vars(layer).values() if torch.is_tensor(v))


def bytes_per_rank(config: HypernetConfig) -> int:
    """bf16 bytes of one rank of a reader's adapter over every one of its target modules."""
    assert config.module_d_in is not None and config.module_d_out is not None
    return (config.module_d_in + config.module_d_out) * len(config.layers) * BF16


def part_ranks(config: HypernetConfig, chunk_tokens: list[int], composed: bool = True) -> list[tuple[int, int]]:
    """(rank, bf16 bytes per rank) of each part of the adapter of chunks with these token counts: the learned
    reader's ``rank`` per chunk, and an associative companion's one rank per chunk token but the last. Composing
    more than one chunk adds one bias correction to each part (the companion's is a zero rank-1 term: it has no
    bias). Not ``composed``: the chunks' stored adapters.
    """
    k = len(chunk_tokens)
    correction = 1 if composed and k > 1 and config.dedupe_bias else 0
    parts = [((k + correction) * config.rank, bytes_per_rank(config))]
    if config.companion is not None:
        parts.append((sum(n - 1 for n in chunk_tokens) + correction, bytes_per_rank(config.companion)))
    return parts


def adapter_bytes(parts: list[tuple[int, int]], max_rank: int | None = None) -> int:
    """bf16 bytes of an adapter with these parts (:func:`part_ranks`), each cut to ``max_rank`` if given (as
    ``LoRAAdapter.compress`` cuts every module above it).
    """
    return sum(min(rank, max_rank or rank) * per_rank for rank, per_rank in parts)


def probe_rss(variant: str, tokens: int, ctx: Context) -> dict:
    """Run one :mod:`benchmarks.rss_probe` process and return its JSON line (peaks measured by the child).

    The child reports its own ``VmHWM``: the kernel's per-child ``ru_maxrss``
    (``os.wait4``, ``RUSAGE_CHILDREN``) is unusable here, because ``exec`` keeps the
    high-water mark of the forked parent image, i.e. this process with its models loaded.
    """
    s = ctx.settings
    cmd = [sys.executable, "-m", "benchmarks.rss_probe", variant, str(tokens), "--threads", str(s.threads),
           "--seed", str(s.seed), "--max-new-tokens", str(s.max_new_tokens), "--top-k", str(s.rag_top_k),
           "--chunk-tokens", str(ctx.hypernet.config.max_chunk_tokens)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"rss probe {variant} {tokens} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_rss(ctx: Context) -> tuple[dict[int, dict[str, Stats]], dict[int, dict[str, Stats]]]:
    """Peak RSS (MiB) and RSS after loading (MiB) per length and variant; variants alternate between runs."""
    s = ctx.settings
    jobs = [(n, v) for run in range(s.runs) for n in s.rss_lengths
            for v in (VARIANTS if run % 2 == 0 else VARIANTS[::-1])]
    with ThreadPoolExecutor(s.rss_workers) as pool:
        results = list(pool.map(lambda job: probe_rss(job[1], job[0], ctx), jobs))
    peak: dict[int, dict[str, list[float]]] = {n: {v: [] for v in VARIANTS} for n in s.rss_lengths}
    loaded: dict[int, dict[str, list[float]]] = {n: {v: [] for v in VARIANTS} for n in s.rss_lengths}
    for (n, v), r in zip(jobs, results):
        peak[n][v].append(r["peak_bytes"] / 2**20)
        loaded[n][v].append(r["after_load_bytes"] / 2**20)
    return ({n: {v: Stats(x) for v, x in d.items()} for n, d in peak.items()},
            {n: {v: Stats(x) for v, x in d.items()} for n, d in loaded.items()})


def _mib(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB"


def run(ctx: Context, img: Path) -> Section:
    s, base, hypernet = ctx.settings, ctx.base, ctx.hypernet
    hc = hypernet.config
    kv_tok, per_rank = kv_bytes_per_token(base.model.config), bytes_per_rank(hc)

    # checks of the formulas against real objects
    check = timing_document(base, 1024, s.seed)
    ids = base.tokenizer(check.text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.inference_mode():
        cache = base.model(input_ids=ids, use_cache=True, logits_to_keep=1).cache
    # the real cache is in the base model's dtype (fp32 on a CPU without native bf16), so check it in that dtype
    kv_real = cache_nbytes(cache)
    kv_formula = kv_bytes_per_token(base.model.config, base.dtype.itemsize) * ids.shape[1]
    check_chunks = [len(c.token_ids) for c in chunk_text(base.tokenizer, check.text, hc.max_chunk_tokens)]
    adapter = hypernet.internalize(base, check.text).to(dtype=torch.bfloat16)
    check_parts = part_ranks(hc, check_chunks)
    adapter_real, adapter_formula = adapter.nbytes(), adapter_bytes(check_parts)

    rows, sizes = [], {"KV cache": [], "adapters (stored)": [], f"applied adapter, max_rank={COMPRESSED_RANK}": []}
    for n in s.footprint_lengths:
        doc = timing_document(base, n, s.seed)
        tokens = [len(c.token_ids) for c in chunk_text(base.tokenizer, doc.text, hc.max_chunk_tokens)]
        parts = part_ranks(hc, tokens)
        kv, stored = doc.n_tokens * kv_tok, adapter_bytes(part_ranks(hc, tokens, composed=False))
        compressed = adapter_bytes(parts, COMPRESSED_RANK)
        rows.append([f"{n:,}", str(len(tokens)), _mib(kv), _mib(stored), f"{kv / stored:.1f}x",
                     " + ".join(str(rank) for rank, _ in parts), _mib(compressed), f"{kv / compressed:.1f}x"])
        for name, value in zip(sizes, (kv, stored, compressed)):
            sizes[name].append(value / 2**20)
    bytes_figure = grouped_bars(img / "memory_bytes.png", "KV cache vs adapter (bf16)", "MiB",
                                [f"{n:,}" for n in s.footprint_lengths], sizes, log=True,
                                note=f"chunk {hc.max_chunk_tokens} tokens, rank {hc.rank}; computed from the "
                                     "configs, checked against real objects")

    combo_rows = []
    for chunk in COMBO_CHUNKS:
        cells = []
        for r in COMBO_RANKS:
            ratio = chunk * kv_tok / adapter_bytes(part_ranks(hc.with_overrides(rank=r), [chunk], composed=False))
            mark = " (default)" if (chunk, r) == (hc.max_chunk_tokens, hc.rank) else ""
            cells.append(f"{ratio:.1f}x{' ✓' if ratio >= 50 else ''}{mark}")
        combo_rows.append([f"{chunk:,}", *cells])

    peak, loaded = measure_rss(ctx)
    rss_rows = []
    for n in s.rss_lengths:
        for v in VARIANTS:
            extra = Stats([p - a for p, a in zip(peak[n][v].samples, loaded[n][v].samples)])
            over_base = peak[n][v].median - peak[n]["base"].median
            rss_rows.append([f"{n:,}", v, peak[n][v].fmt("MiB"), loaded[n][v].fmt("MiB"), extra.fmt("MiB"),
                             f"{over_base:+,.0f} MiB"])
    rss_figure = grouped_bars(img / "peak_rss.png", "Peak RSS per variant (own process)", "MiB",
                              [f"{n:,} tokens" for n in s.rss_lengths],
                              {v: [peak[n][v] for n in s.rss_lengths] for v in VARIANTS},
                              note=f"median of {s.runs} processes per bar, bars min-max")

    default_ratio = hc.max_chunk_tokens * kv_tok / adapter_bytes(part_ranks(hc, [hc.max_chunk_tokens], composed=False))
    if hc.companion is None:
        companion_line, ceiling = "", ""
    else:
        companion_per_rank = bytes_per_rank(hc.companion)
        companion_line = (
            f" With its associative companion each chunk also stores {companion_per_rank:,} bytes per token but the "
            f"last ((d_in {hc.companion.module_d_in} + d_out {hc.companion.module_d_out}) x "
            f"{len(hc.companion.layers)} layer(s) x 2 bytes, one rank per stored token); the composed rank is "
            "written as learned + companion.")
        ceiling = (f" With the companion no chunk length reaches it: the companion alone stores {companion_per_rank:,} "
                   f"bytes per token against the KV cache's {kv_tok:,}, a ceiling of {kv_tok / companion_per_rank:.1f}x.")
    lines = [
        f"KV cache: {kv_tok:,} bytes per token in bf16 (2 x {base.model.config.num_hidden_layers} layers x "
        f"{base.model.config.num_key_value_heads} KV heads x head dim x 2 bytes); a real `past_key_values` for "
        f"{ids.shape[1]:,} tokens holds {kv_real:,} bytes, the formula in its dtype ({base.dtype}) gives {kv_formula:,} "
        f"({'match' if kv_real == kv_formula else 'MISMATCH'}).",
        f"Adapter: {per_rank:,} bytes per rank in bf16 ((d_in {hc.module_d_in} + d_out {hc.module_d_out}) x "
        f"{len(hc.layers)} layers x 2 bytes), rank {hc.rank} per {hc.max_chunk_tokens}-token chunk.{companion_line} "
        f"A real composed adapter of {len(check_chunks)} chunks (rank {' + '.join(str(r) for r, _ in check_parts)}) "
        f"holds {adapter_real:,} bytes, the formula gives {adapter_formula:,} "
        f"({'match' if adapter_real == adapter_formula else 'MISMATCH'}). Chunk "
        f"adapters are stored in the base model's dtype ({base.dtype} here; these tables count bf16): a chunk file "
        "holds these bytes plus the "
        "chunk's text and a safetensors header. Composing K > 1 chunks adds one rank-r bias correction. "
        f"*Applied, max_rank={COMPRESSED_RANK}*: the composed adapter under a `MemoryConfig(max_rank="
        f"{COMPRESSED_RANK})` budget (SVD-compressed when the composed rank exceeds it).",
        "",
        *md_table(["tokens", "chunks", "KV cache", "adapters (stored)", "KV / adapters", "composed rank",
                   f"applied, max_rank={COMPRESSED_RANK}", "KV / applied"], rows),
        "",
        f"![KV cache vs adapter bytes](img/{bytes_figure.name})",
        "",
        "KV cache of one chunk / that chunk's adapter, for other chunk lengths and learned-reader ranks, the "
        "companion's part (if any) included (✓: at least 50x). "
        "Lengths above the hypernetwork's `max_chunk_tokens` need a hypernetwork trained for them.",
        "",
        *md_table(["chunk tokens", *(f"rank {r}" for r in COMBO_RANKS)], combo_rows),
        "",
        f"The learned reader alone reaches the 1/50 target at chunk tokens / rank >= "
        f"{math.ceil(50 * per_rank / kv_tok)} per chunk.{ceiling} The default ({hc.max_chunk_tokens} tokens, rank "
        f"{hc.rank}) stores 1/{default_ratio:.1f}. For a "
        f"whole long document a rank budget gets there instead: with `max_rank={COMPRESSED_RANK}` the applied "
        "adapter stays the same size whatever the length (see *KV / applied* above), at the price of an SVD "
        "approximation.",
        "",
        f"Peak RSS, each variant in its own process (load the base model and what the variant needs, take in "
        f"the document, answer one question; {s.runs} processes each, alternated), as the process's own "
        "`VmHWM`. *After load*: the peak once the models are loaded; *added*: what taking in the document and "
        "answering added on top (the `base` row, a closed-book answer, shows what the first generation alone "
        "adds); *vs base*: median peak minus the `base` variant's.",
        "",
        *md_table(["tokens", "variant", "peak RSS", "after load", "added", "vs base"], rss_rows),
        "",
        f"![peak RSS](img/{rss_figure.name})",
    ]
    targets = [Target.at_least("adapter vs KV cache", "adapter <= 1/50 of the KV cache at the default chunk length",
                               default_ratio, 50,
                               f"chunk {hc.max_chunk_tokens}, rank {hc.rank}: the adapter is 1/{default_ratio:.1f} "
                               f"of the chunk's KV cache")]
    data = {"kv_bytes_per_token": kv_tok, "kv_check": [kv_real, kv_formula], "adapter_bytes_per_rank": per_rank,
            "adapter_check": [adapter_real, adapter_formula], "table": rows,
            "rss_mib": {str(n): {v: {"peak": peak[n][v].to_dict(), "after_load": loaded[n][v].to_dict()}
                                 for v in VARIANTS} for n in s.rss_lengths}}
    return Section("3. Memory: adapter vs KV cache, peak RSS", lines, [bytes_figure.name, rss_figure.name],
                   targets, data)

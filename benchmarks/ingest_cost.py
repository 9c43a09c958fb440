"""Benchmark 1: what it costs to internalize a document, by length.

Variants, timed alternately at each length:

- **internalize**: ``DocToLoRA.internalize`` (chunk, early-exit encoder pass over
  batches of 8 chunks, hypernetwork heads, compose).
- **prefill, whole document**: one forward pass of the full base model over the
  document, as an in-context answer or a KV cache must pay (only the last
  position's logits). The model's window is 8,192 tokens, so longer documents
  are prefilled window by window (independent 8,192-token pieces).
- **prefill, same chunks**: the full base model over the very chunks the
  hypernetwork reads (batches of 8): the same work without the early exit.
- **context distillation**: ``distill_document`` (the per-document baseline)
  timed for a few steps; the per-step time times the reference's 300 steps is
  reported, marked extrapolated. It trains on the document's question-answer
  pairs only, so it excludes the in-context teacher pass over the document: a
  lower bound on the real cost.
- **RAG indexing**: chunk + MiniLM embeddings into a LlamaIndex vector index, for context.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lora_memory.base import LoadedModel
from lora_memory.chunking import chunk_text
from lora_memory.padding import pad_batch
from lora_memory.training.d2l.baseline import distill_document

from .common import Context, Section, Stats, Target, md_table, measure, timing_document
from .plots import line_plot

WINDOW = 8192  # SmolLM2-135M's context window (max_position_embeddings)
PREFILL_BATCH = 8  # chunks per pass, as the hypernetwork's ingest batches them

INTERNALIZE, PREFILL, PREFILL_CHUNKS, DISTILL, RAG_INDEX = (
    "internalize", "prefill (whole document)", "prefill (same chunks)", "context distillation", "RAG indexing")


@torch.inference_mode()
def prefill(base: LoadedModel, token_ids: list[int], window: int = WINDOW) -> None:
    """Full-model forward over ``token_ids`` one window at a time, building the KV cache as a prefill does."""
    for start in range(0, len(token_ids), window):
        ids = torch.tensor([token_ids[start:start + window]], device=base.device)
        base.model(input_ids=ids, use_cache=True, logits_to_keep=1)


@torch.inference_mode()
def prefill_chunks(base: LoadedModel, chunks: list[list[int]], batch_size: int = PREFILL_BATCH) -> None:
    """Full-model forward over chunks, ``batch_size`` at a time, right-padded."""
    pad = base.tokenizer.pad_token_id or 0
    for start in range(0, len(chunks), batch_size):
        group = chunks[start:start + batch_size]
        ids, mask = pad_batch(group, pad)
        base.model(input_ids=ids.to(base.device), attention_mask=mask.to(base.device), use_cache=False,
                   logits_to_keep=1)


def run(ctx: Context, img: Path) -> Section:
    s, base, hypernet = ctx.settings, ctx.base, ctx.hypernet
    results: dict[int, dict[str, Stats]] = {}
    actual: dict[int, int] = {}
    for i, length in enumerate(s.ingest_lengths):
        doc = timing_document(base, length, s.seed)
        ids = base.tokenizer(doc.text, add_special_tokens=False).input_ids
        chunks = [c.token_ids for c in chunk_text(base.tokenizer, doc.text, hypernet.config.max_chunk_tokens)]
        actual[length] = len(ids)
        variants = {
            INTERNALIZE: lambda: hypernet.internalize(base, doc.text),
            PREFILL: lambda: prefill(base, ids),
            PREFILL_CHUNKS: lambda: prefill_chunks(base, chunks),
            DISTILL: lambda: distill_document(base, doc.example, hypernet.config, steps=s.distill_steps
                                              ).seconds_per_step,
            RAG_INDEX: lambda: ctx.rag.index(doc.text),
        }
        stats = measure(variants, s.runs, s.warmup if i == 0 else 0, self_timed={DISTILL})
        stats[DISTILL] = stats[DISTILL].scaled(s.distill_reference_steps)
        results[length] = stats

    lengths = list(results)
    order = [INTERNALIZE, PREFILL, PREFILL_CHUNKS, DISTILL, RAG_INDEX]
    label = {DISTILL: f"{DISTILL} ({s.distill_reference_steps} steps, extrapolated)"}
    figure = line_plot(
        img / "ingest_cost.png", "Cost of taking in a document", "document length (tokens)", "seconds",
        {label.get(v, v): (lengths, [results[n][v] for n in lengths]) for v in order},
        dashed=[label[DISTILL]],
        note=f"median of {s.runs} runs, bars min-max; {ctx.settings.threads} threads; distillation extrapolated "
             f"from {s.distill_steps} steps")

    rows = []
    for n in lengths:
        r = results[n]
        rows.append([f"{n:,}" + (" (windowed)" if actual[n] > WINDOW else ""), r[INTERNALIZE].fmt(), r[PREFILL].fmt(),
                     r[PREFILL_CHUNKS].fmt(), r[DISTILL].fmt(), r[RAG_INDEX].fmt(),
                     f"{r[INTERNALIZE].median / r[PREFILL].median:.2f}x",
                     f"{r[DISTILL].median / r[INTERNALIZE].median:,.0f}x"])
    ratio_prefill = {n: results[n][INTERNALIZE].median / results[n][PREFILL].median for n in lengths}
    speedup_distill = {n: results[n][DISTILL].median / results[n][INTERNALIZE].median for n in lengths}
    worst_prefill = max(ratio_prefill, key=ratio_prefill.get)
    worst_distill = min(speedup_distill, key=speedup_distill.get)
    lines = [
        f"Hypernetwork: {ctx.hypernet_label}. Chunk length {hypernet.config.max_chunk_tokens} tokens, "
        f"encoder exits after layer {hypernet.config.encoder_depth} of {base.model.config.num_hidden_layers}"
        + (f" (its companion's after layer {hypernet.companion.config.encoder_depth})." if hypernet.companion else "."),
        "",
        *md_table(["tokens", "internalize", "prefill (whole doc)", "prefill (same chunks)",
                   f"distillation ({s.distill_reference_steps} steps, extrapolated)", "RAG indexing",
                   "internalize / prefill", "distillation / internalize"], rows),
        "",
        "Cells: median (min-max) seconds over the runs. *Prefill (whole doc)*: one full-model pass over the "
        f"document; past the model's {WINDOW:,}-token window it is measured window by window ({WINDOW:,}-token "
        "pieces, marked *windowed*). *Prefill (same chunks)*: full-model passes over the hypernetwork's own "
        f"chunks, {PREFILL_BATCH} per batch. *Distillation*: `distill_document` timed for {s.distill_steps} steps "
        f"per run, the mean step time times {s.distill_reference_steps} (**extrapolated**, not run); it trains "
        "on the document's question-answer pairs (one needle question here), so its step cost does not grow with "
        "the document and it leaves out the teacher's in-context pass: a lower bound on real context distillation.",
        "",
        f"![ingest cost](img/{figure.name})",
    ]
    if speedup_distill[worst_distill] < 100:
        lines += ["", f"Why the distillation target is missed at {worst_distill:,} tokens: this baseline's cost is "
                      f"{s.distill_reference_steps} steps on the questions alone, flat in the document's length, "
                      "while internalization grows with it, so the ratio falls as documents grow. A per-document "
                      "distillation that generates questions in proportion to the document (and runs the teacher "
                      "over it) would cost more; this one is the cheapest version."]
    targets = [
        Target.at_most("ingest vs plain prefill", "internalize <= 1.2x prefill (whole doc)",
                       ratio_prefill[worst_prefill], 1.2,
                       f"worst at {worst_prefill:,} tokens; " + ", ".join(f"{n:,}: {v:.2f}x"
                                                                         for n, v in ratio_prefill.items())),
        Target.at_least("ingest vs context distillation", ">= 100x faster than 300-step distillation",
                        speedup_distill[worst_distill], 100,
                        f"worst at {worst_distill:,} tokens (distillation extrapolated, lower bound); "
                        + ", ".join(f"{n:,}: {v:,.0f}x" for n, v in speedup_distill.items())),
    ]
    data = {str(n): {"tokens": actual[n], **{v: st.to_dict() for v, st in results[n].items()}} for n in lengths}
    return Section("1. Internalization cost vs document length", lines, [figure.name], targets, data)

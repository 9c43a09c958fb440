"""Benchmark 2: how long an answer takes once the document is taken in, by document length.

Same question, same greedy decoding with a fixed ``max_new_tokens``, through
:func:`lora_memory.generation.generate` for every variant:

- **internalized**: the document's composed adapter applied (every chunk's adapter
  concatenated: the largest adapter a document gets; the memory's default applies
  only the routed chunk's, so its answers are at most this slow), the question
  alone in the prompt;
- **in-context**: the whole document in the prompt (past the model's 8,192-token
  window the model still runs, out of its trained range: marked);
- **RAG**: retrieval of the top-k chunks (query embedding + vector search) plus
  the answer with those chunks in the prompt;
- **closed-book**: the question alone, no adapter: the floor the others add to.

The adapter and the RAG index are built before timing: this is query time only.
"""

from __future__ import annotations

from pathlib import Path

from lora_memory.evaluation.prompts import in_context_prompt
from lora_memory.generation import GenerationConfig, generate

from .common import Context, Section, Stats, Target, md_table, measure, timing_document
from .ingest_cost import WINDOW
from .plots import grouped_bars

INTERNALIZED, IN_CONTEXT, RAG, CLOSED = "internalized", "in-context", "RAG", "closed-book"
TARGET_LENGTH = 4096  # the length the speed-up target refers to


def run(ctx: Context, img: Path) -> Section:
    s, base = ctx.settings, ctx.base
    config = GenerationConfig(max_new_tokens=s.max_new_tokens)
    results: dict[int, dict[str, Stats]] = {}
    prompt_tokens: dict[int, dict[str, int]] = {}
    completion: dict[int, dict[str, list[int]]] = {}
    for i, length in enumerate(s.answer_lengths):
        doc = timing_document(base, length, s.seed)
        adapter = ctx.hypernet.internalize(base, doc.text).to(dtype=base.dtype)  # as the memory applies it
        index = ctx.rag.index(doc.text)
        prompts = {INTERNALIZED: doc.question, IN_CONTEXT: in_context_prompt(doc.text, doc.question),
                   CLOSED: doc.question}
        done: dict[str, list[int]] = {v: [] for v in (INTERNALIZED, IN_CONTEXT, RAG, CLOSED)}
        used: dict[str, int] = {}

        def answer(variant: str) -> None:
            if variant == RAG:
                out = ctx.rag.answer(index, doc.question, config)
            else:
                out = generate(base.model, base.tokenizer, prompts[variant],
                               adapter=adapter if variant == INTERNALIZED else None, config=config)
            done[variant].append(out.completion_tokens)
            used[variant] = out.prompt_tokens

        warmup = s.warmup if i == 0 else 0  # process warm-up once, before the first length
        results[length] = measure({v: (lambda v=v: answer(v)) for v in done}, s.runs, warmup)
        prompt_tokens[length], completion[length] = used, done

    lengths = list(results)
    variants = [INTERNALIZED, IN_CONTEXT, RAG, CLOSED]
    groups = [f"{n:,}" + (" (beyond window)" if n > WINDOW else "") for n in lengths]
    figure = grouped_bars(img / "answer_latency.png", "Answer latency once the document is taken in",
                          "seconds per answer", groups, {v: [results[n][v] for n in lengths] for v in variants},
                          log=True, note=f"median of {s.runs} runs, bars min-max; greedy, max_new_tokens="
                                         f"{s.max_new_tokens}; {s.threads} threads")
    rows = []
    for n, group in zip(lengths, groups):
        r, p, c = results[n], prompt_tokens[n], completion[n]
        cells = [f"{r[v].fmt()}<br>{p[v]:,} + {max(c[v])} tok" for v in variants]
        speedup = r[IN_CONTEXT].median / r[INTERNALIZED].median
        rows.append([group, *cells, f"{speedup:.1f}x"])
    lines = [
        *md_table(["tokens", *variants, "in-context / internalized"], rows),
        "",
        "Internalized: every chunk's adapter concatenated (rank grows with the document), the slowest adapter "
        "the memory can apply; its default, the routed chunk's adapter alone, is rank "
        f"{ctx.hypernet.config.rank}. "
        f"Cells: median (min-max) seconds per answer, then prompt tokens + most generated tokens. Greedy decoding, "
        f"`max_new_tokens={s.max_new_tokens}`; an answer may stop earlier at end-of-sequence, so the generated "
        f"counts are shown. RAG puts the top {s.rag_top_k} of the document's {ctx.rag.chunk_tokens}-token chunks "
        "(LlamaIndex `VectorStoreIndex`, all-MiniLM-L6-v2 embeddings of each chunk's first 256 word pieces) in the "
        "prompt; its time includes retrieval. "
        f"Lengths past the model's {WINDOW:,}-token window are measured anyway and marked *beyond window* "
        "(the model runs but is outside its trained range).",
        "",
        f"![answer latency](img/{figure.name})",
    ]
    targets = []
    if TARGET_LENGTH in results:
        r = results[TARGET_LENGTH]
        targets.append(Target.at_least("internalized vs in-context answer", ">= 10x faster at 4K tokens",
                                       r[IN_CONTEXT].median / r[INTERNALIZED].median, 10,
                                       f"in-context {r[IN_CONTEXT].median:.2f} s vs internalized "
                                       f"{r[INTERNALIZED].median:.2f} s"))
    else:
        targets.append(Target("internalized vs in-context answer", ">= 10x faster at 4K tokens", None, None,
                              "4K not measured in this mode"))
    data = {str(n): {"prompt_tokens": prompt_tokens[n], "completion_tokens": completion[n],
                     **{v: st.to_dict() for v, st in results[n].items()}} for n in lengths}
    return Section("2. Answer latency vs document length", lines, [figure.name], targets, data)

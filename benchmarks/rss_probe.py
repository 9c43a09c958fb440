"""One variant's memory use, in a process of its own: ``python -m benchmarks.rss_probe VARIANT TOKENS``.

The process loads only what its variant needs, takes in a document of TOKENS
tokens the variant's way and answers one question, then prints one JSON line
with its peak resident set size (``VmHWM``) right after loading the models
(``after_load_bytes``) and at the end (``peak_bytes``). ``exec`` gives the
process a fresh address space, so ``VmHWM`` counts only this process's own use.

Variants: ``base`` (the base model answering closed-book: the floor),
``internalized`` (hypernetwork ingest, then the answer with the adapter),
``in-context`` (the document in the prompt), ``rag`` (MiniLM index, top-k chunks in the prompt).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys

import torch

from lora_memory.base import load_base_model
from lora_memory.evaluation.prompts import in_context_prompt
from lora_memory.generation import GenerationConfig, generate

from .common import DTYPE, load_hypernet, timing_document

VARIANTS = ("base", "internalized", "in-context", "rag")


def peak_rss_bytes() -> int:
    """This process's peak RSS so far (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("tokens", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--chunk-tokens", type=int, default=256, help="RAG chunk length (the hypernetwork's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    base = load_base_model("embedded", dtype=DTYPE, device="cpu")
    hypernet = load_hypernet(base, args.seed)[0] if args.variant == "internalized" else None
    rag = None
    if args.variant == "rag":
        from .minilm import MiniLMEmbedding
        from .rag import RagPipeline

        rag = RagPipeline(base, MiniLMEmbedding(), chunk_tokens=args.chunk_tokens, top_k=args.top_k)
    doc = timing_document(base, args.tokens, args.seed)
    after_load = peak_rss_bytes()

    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    if args.variant == "rag":
        rag.answer(rag.index(doc.text), doc.question, config)
    else:
        adapter = hypernet.internalize(base, doc.text).to(dtype=base.dtype) if hypernet is not None else None
        prompt = in_context_prompt(doc.text, doc.question) if args.variant == "in-context" else doc.question
        generate(base.model, base.tokenizer, prompt, adapter=adapter, config=config)
    json.dump({"variant": args.variant, "tokens": doc.n_tokens, "after_load_bytes": after_load,
               "peak_bytes": peak_rss_bytes()}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Peak memory of an ingest's tokenize-and-chunk stage, whole text at once versus streamed.

``python -m benchmarks.ingest_memory --mb 5 20`` runs each (mode, size) in a process of
its own and prints one Markdown row each: peak RSS (``VmHWM``) after the text is generated
(the floor: tokenizer and text) and after it is chunked, and their difference.

- ``whole``: ``chunk_text`` on the whole text, every chunk kept, as ``ingest_document``
  did before it streamed (the hypernetwork then ran batch by batch over that list);
- ``streamed``: ``iter_chunks`` consumed batch by batch, keeping only what ingest keeps
  per chunk (a manifest record with a 200-character snippet).

The hypernetwork and chunk-file stages are bounded by ``ingest_batch_size`` in both modes
and are left out, so a 20 MB text is measured in a minute on one core (the real model would
take hours). The text: paragraphs of random English words, seeded, generated in the process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import subprocess
import sys

MODES = ("whole", "streamed")
CHUNK_TOKENS = 256  # the shipped hypernetwork's max_chunk_tokens
BATCH = 8  # MemoryConfig's default ingest_batch_size
_WORDS = ("the river copper market seven north glass orchard signal lantern quiet harbour winter "
          "volcano zebra tower company finished iron eruptions recorded thousand years").split()


def generate_text(n_bytes: int, seed: int = 0) -> str:
    """Paragraphs of 20-120 random words, about ``n_bytes`` characters."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_bytes:
        paragraph = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 120))).capitalize() + "."
        parts.append(paragraph)
        size += len(paragraph) + 2
    return "\n\n".join(parts)


def measure(mode: str, megabytes: float) -> dict[str, float]:
    """In this process: peak RSS before and after chunking a generated text of ``megabytes`` MB."""
    from transformers import AutoTokenizer

    from lora_memory.base import embedded_model_dir
    from lora_memory.chunking import chunk_text, iter_chunks
    from lora_memory.collection import SNIPPET_CHARS

    from .rss_probe import peak_rss_bytes

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    text = generate_text(int(megabytes * 1e6))
    tokenizer("warm up", add_special_tokens=False)
    floor = peak_rss_bytes()
    if mode == "whole":
        chunks = chunk_text(tokenizer, text, CHUNK_TOKENS)
        n_chunks = len(chunks)
    else:
        records, stream = [], iter_chunks(tokenizer, text, CHUNK_TOKENS)
        while batch := list(itertools.islice(stream, BATCH)):
            records.extend((c.char_start, c.char_end, len(c.token_ids), c.text[:SNIPPET_CHARS]) for c in batch)
        n_chunks = len(records)
    return {"mode": mode, "mb": megabytes, "chunks": n_chunks, "floor_mib": floor / 2**20,
            "peak_mib": peak_rss_bytes() / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, nargs="+", default=[5.0, 20.0], help="text sizes in MB")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--child", nargs=2, metavar=("MODE", "MB"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child[0], float(args.child[1]))))
        return 0
    print("| mode | text (MB) | chunks | peak RSS before chunking (MiB) | peak RSS after (MiB) | growth (MiB) |")
    print("|---|---|---|---|---|---|")
    for megabytes, mode in itertools.product(args.mb, args.modes):
        out = subprocess.run([sys.executable, "-m", "benchmarks.ingest_memory", "--child", mode, str(megabytes)],
                             check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(f"| {mode} | {megabytes:g} | {row['chunks']} | {row['floor_mib']:.0f} | {row['peak_mib']:.0f} | "
              f"{row['peak_mib'] - row['floor_mib']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fit an associative reader: ``python -m lora_memory.training.d2l.associative --out DIR``.

The reader (:class:`~lora_memory.hypernet.associative.AssociativeReader`) trains
nothing; what it needs from data is the covariance of its target modules' inputs
over ordinary text, measured here on training-split Wikipedia summaries (a title
held out by the project rule is never read, nor any article of the written
questions' validation part) and saved with ``save_pretrained`` like any
hypernetwork checkpoint.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import torch

from ...base import load_base_model
from ...hypernet.associative import AssociativeReader
from .prose import load_articles, written_part


def covariance_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` training-split article texts outside the written validation part, in a seeded random order."""
    pool = [a.text for a in load_articles("train") if written_part(a.title) == "train"]
    random.Random(seed).shuffle(pool)
    return pool[:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Directory for config.json and model.safetensors.")
    parser.add_argument("--articles", type=int, default=200, help="Training-split articles the covariance reads.")
    parser.add_argument("--layers", default="24", help="Comma-separated target layers.")
    parser.add_argument("--alpha", type=float, default=None, help="Value scale (default: HypernetConfig's).")
    parser.add_argument("--mu", type=float, default=None, help="Covariance weight (default: HypernetConfig's).")
    parser.add_argument("--map-rank", type=int, default=None,
                        help="Rank of the trained query map (with a value map); 0: the closed form alone.")
    parser.add_argument("--chat-wrap", action="store_true",
                        help="Read each chunk as a user's chat message (as the learned reader does), not bare.")
    parser.add_argument("--base-model", default="embedded")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_base_model(args.base_model, dtype=args.dtype)
    overrides: dict[str, Any] = {"target_layers": [int(x) for x in args.layers.split(",")], "chat_wrap": args.chat_wrap}
    overrides.update({k: v for k, v in (("associative_alpha", args.alpha), ("associative_mu", args.mu),
                                        ("associative_map_rank", args.map_rank)) if v is not None})
    reader = AssociativeReader.fit(base, covariance_texts(args.articles), **overrides)
    reader.save_pretrained(args.out)
    print(f"saved {reader.kind} ({reader.config.layers}, alpha {reader.config.associative_alpha}, "
          f"mu {reader.config.associative_mu}, chat_wrap {reader.config.chat_wrap}) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

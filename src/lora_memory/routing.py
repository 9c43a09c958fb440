"""Choosing which chunk adapters to apply for a question (``top_k`` routing).

The default router is BM25 over the chunks' text, stored with each chunk at
ingest. It is cheap, needs no model, and is exact for the questions that matter
most to a memory (names, numbers, rare terms). BM25+ is used rather than Okapi
BM25 because its term weights stay positive in tiny collections (Okapi gives a
term found in half of two chunks a weight of zero).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rank_bm25 import BM25Plus

_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return _WORD.findall(text.lower())


class BM25Index:
    """Ranks a fixed list of texts against queries.

    Example:
        >>> index = BM25Index(["the cat sat", "a dog barked", "the dog sat"])
        >>> [i for i, _ in index.top_k("which dog barked?", 2)]
        [1, 2]
    """

    def __init__(self, texts: Sequence[str]):
        self.size = len(texts)
        docs = [tokenize(t) for t in texts]
        self._bm25 = BM25Plus(docs) if any(docs) else None  # BM25 divides by the mean length

    def top_k(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best (position, score) pairs, best first; ties keep the texts' order."""
        if self._bm25 is None:
            scores = [0.0] * self.size
        else:
            scores = [float(s) for s in self._bm25.get_scores(tokenize(query))]
        order = sorted(range(self.size), key=lambda i: (-scores[i], i))
        return [(i, scores[i]) for i in order[:k]]

"""Choosing which chunk adapters to apply for a question (``top_k`` routing).

The default router is BM25 over the chunks' text, stored with each chunk at
ingest. It is cheap, needs no model, and is exact for the questions that matter
most to a memory (names, numbers, rare terms). BM25+ is used rather than Okapi
BM25 because its term weights stay positive in tiny collections (Okapi gives a
term found in half of two chunks a weight of zero).

:meth:`BM25Index.relevance` turns a chunk's score into how much of the question the
chunk holds, so a memory can tell a question its documents answer from one they do
not (``MemoryConfig.min_relevance``, measured in docs/reliability.md).
"""

from __future__ import annotations

import math
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

    def relevance(self, query: str, score: float) -> float:
        """How much of ``query`` a chunk with BM25 score ``score`` holds (0 when it holds none of its words).

        rank_bm25's BM25+ gives every chunk ``delta * idf`` for each query word found
        anywhere in the collection; what is left is the part earned by the words the
        chunk holds. It is divided by ``log(size + 1)`` (the idf of a word found in a
        single chunk) and by the number of query words, so a question whose every word
        is rare and in the chunk scores about 1, a question sharing only common words
        with it (``the``, ``is``) scores near 0, and the value means the same at any
        collection size. Example:

            >>> index = BM25Index(["zebras live on the savanna", "the tower stands in paris"])
            >>> round(index.relevance("where do zebras live?", index.top_k("where do zebras live?", 1)[0][1]), 2)
            0.5
        """
        words = tokenize(query)
        if self._bm25 is None or not words:
            return 0.0
        baseline = sum((self._bm25.idf.get(w) or 0.0) * self._bm25.delta for w in words)
        return max(0.0, score - baseline) / (len(words) * math.log(self.size + 1))

    def top_k(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best (position, score) pairs, best first; ties keep the texts' order."""
        if self._bm25 is None:
            scores = [0.0] * self.size
        else:
            scores = [float(s) for s in self._bm25.get_scores(tokenize(query))]
        order = sorted(range(self.size), key=lambda i: (-scores[i], i))
        return [(i, scores[i]) for i in order[:k]]

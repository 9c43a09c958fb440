"""Choosing which chunk adapters to apply for a question (``top_k`` routing): BM25+ ranking.

The router is BM25 over the chunks' text. It is cheap, needs no model, and is
exact for the questions that matter most to a memory (names, numbers, rare
terms). BM25+ is used rather than Okapi BM25 because its term weights stay
positive in tiny collections (Okapi gives a term found in half of two chunks a
weight of zero). The scores are those of rank_bm25's ``BM25Plus`` (k1 1.5, b 0.75,
delta 1), bit for bit; the test suite checks it against that package.

:class:`Ranker` holds the math over any postings source: :class:`BM25Index` keeps
its postings in memory (evaluations, benchmarks), and the collection's persistent
index (:mod:`lora_memory.routing_index`) reads them from SQLite, so a collection
is never re-indexed on open. Only the postings of the question's words are read,
so a query touches the chunks that hold one of them, not the whole collection.

:meth:`Ranker.relevance` turns a chunk's score into how much of the question the
chunk holds, so a memory can tell a question its documents answer from one they do
not (``MemoryConfig.min_relevance``, measured in docs/reliability.md).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence

_WORD = re.compile(r"\w+")
K1, B, DELTA = 1.5, 0.75, 1.0


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens."""
    return _WORD.findall(text.lower())


class Ranker(ABC):
    """BM25+ over ``size`` texts of the given token ``lengths``; subclasses supply each word's postings."""

    def __init__(self, lengths: Sequence[int]):
        self.size = len(lengths)
        self.lengths = lengths
        total = sum(lengths)
        self.avgdl = total / self.size if self.size else 0.0
        self.empty = total == 0  # BM25 divides by the mean length: nothing to rank

    @abstractmethod
    def postings(self, words: set[str]) -> dict[str, Mapping[int, int]]:
        """For each of ``words`` found in the texts: position -> term frequency (positions index ``lengths``)."""

    def _scores(self, words: list[str]) -> tuple[dict[int, float], float]:
        """Scores of the positions holding a query word, and the score of every other position."""
        if self.empty or not words:
            return {}, 0.0
        found = self.postings(set(words))
        idf = {w: math.log((self.size + 1) / len(p)) for w, p in found.items() if p}
        hits: dict[int, float] = {pos: 0.0 for p in found.values() for pos in p}
        rest = 0.0
        for w in words:  # summed word by word, as rank_bm25 does, so the floats agree exactly
            weight, post = idf.get(w, 0.0), found.get(w, {})
            for pos in hits:
                tf = post.get(pos, 0)
                norm = K1 * (1 - B + B * self.lengths[pos] / self.avgdl)
                hits[pos] += weight * (DELTA + (tf * (K1 + 1)) / (norm + tf))
            rest += weight * (DELTA + 0.0)
        return hits, rest

    def search(self, query: str, k: int) -> list[tuple[int, float, float]]:
        """The ``k`` best (position, score, relevance) triples, best first; ties keep the texts' order."""
        words = tokenize(query)
        hits, rest = self._scores(words)
        best = sorted(hits.items(), key=lambda item: (-item[1], item[0]))[:k]
        if len(best) < k:  # every other text scores ``rest``: the first ones in order fill the list
            best += [(i, rest) for i in range(self.size) if i not in hits][: k - len(best)]
            best.sort(key=lambda item: (-item[1], item[0]))
        return [(pos, score, self._relevance(score, rest, len(words))) for pos, score in best]

    def route(self, query: str, k: int, min_relevance: float | None) -> tuple[list[tuple[int, float, float]], float | None]:
        """What ``LoRAMemory`` applies: the :meth:`search` hits whose relevance reaches ``min_relevance`` (all
        ``k`` for None), best first, and, when ``min_relevance`` is set, the best relevance seen.
        """
        found = self.search(query, k)
        if min_relevance is None:
            return found, None
        return [f for f in found if f[2] >= min_relevance], max((r for _, _, r in found), default=None)

    def top_k(self, query: str, k: int) -> list[tuple[int, float]]:
        """The ``k`` best (position, score) pairs, best first; ties keep the texts' order."""
        return [(pos, score) for pos, score, _ in self.search(query, k)]

    def relevance(self, query: str, score: float) -> float:
        """How much of ``query`` a chunk with BM25 score ``score`` holds (0 when it holds none of its words).

        BM25+ gives every chunk ``delta * idf`` for each query word found anywhere in
        the collection; what is left is the part earned by the words the chunk holds.
        It is divided by ``log(size + 1)`` (the idf of a word found in a single chunk)
        and by the number of query words, so a question whose every word is rare and in
        the chunk scores about 1, a question sharing only common words with it (``the``,
        ``is``) scores near 0, and the value means the same at any collection size. Example:

            >>> index = BM25Index(["zebras live on the savanna", "the tower stands in paris"])
            >>> round(index.relevance("where do zebras live?", index.top_k("where do zebras live?", 1)[0][1]), 2)
            0.5
        """
        words = tokenize(query)
        return self._relevance(score, self._scores(words)[1], len(words))

    def _relevance(self, score: float, rest: float, n_words: int) -> float:
        if self.empty or not n_words:
            return 0.0
        return max(0.0, score - rest) / (n_words * math.log(self.size + 1))


class BM25Index(Ranker):
    """Ranks a fixed list of texts against queries, postings in memory.

    Example:
        >>> index = BM25Index(["the cat sat", "a dog barked", "the dog sat"])
        >>> [i for i, _ in index.top_k("which dog barked?", 2)]
        [1, 2]
    """

    def __init__(self, texts: Sequence[str]):
        self._postings: dict[str, dict[int, int]] = {}
        lengths = []
        for pos, text in enumerate(texts):
            words = tokenize(text)
            lengths.append(len(words))
            for word, tf in Counter(words).items():
                self._postings.setdefault(word, {})[pos] = tf
        super().__init__(lengths)

    def postings(self, words: set[str]) -> dict[str, Mapping[int, int]]:
        """See :meth:`Ranker.postings`."""
        return {w: self._postings[w] for w in words if w in self._postings}

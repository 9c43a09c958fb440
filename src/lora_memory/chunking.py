"""Token-based chunking that prefers paragraph and sentence edges.

A document longer than the hypernetwork's training length is split into chunks
of at most ``max_tokens`` base-model tokens. Chunks are roughly equal in size
(so no tiny tail chunk), and each cut is moved back to the nearest paragraph
break, else sentence end, else word boundary, within the last quarter of the
chunk (so a dense text may take a chunk or two more than the minimum). The chunks' token ids concatenate to exactly the document's token ids:
nothing is lost or duplicated.

:func:`iter_chunks` does the same for a text of any length in bounded memory: it
tokenizes and chunks one segment of at most ``SEGMENT_CHARS`` characters at a time
(cut before a line break or a space that follows text, where a byte-level BPE
tokenizer's pre-tokenizer cuts too), so the
tokenizer never holds more than a segment. A text no longer than one segment is
chunked exactly as :func:`chunk_text` does; a longer one may differ from whole-text
tokenization at a segment edge only where no line break or space was found (a hard
cut), and the chunks' character spans still cover the text exactly.

Example:
    >>> chunks = chunk_text(tokenizer, text, max_tokens=256)  # doctest: +SKIP
    >>> sum((c.token_ids for c in chunks), []) == tokenizer(text, add_special_tokens=False).input_ids  # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .errors import EmptyDocumentError

_PARAGRAPH = re.compile(r"\n\s*\n\s*$")
_SENTENCE = re.compile(r"[.!?;:][\"')\]]?\s*$")
_SPACE = re.compile(r"\s$")
_TEXT = re.compile(r"\S")
SEGMENT_CHARS = 2**18  # characters tokenized at once by iter_chunks (~64k tokens of English): bounds its memory


@dataclass(frozen=True)
class Chunk:
    """One chunk: its position, its tokens and the text span they cover."""

    index: int
    token_ids: list[int]
    text: str
    char_start: int
    char_end: int


def _edge_score(tail: str) -> int:
    """How good a cut is after text ending in ``tail``: 3 paragraph, 2 sentence, 1 word, 0 mid-word."""
    if _PARAGRAPH.search(tail):
        return 3
    if _SENTENCE.search(tail):
        return 2
    if _SPACE.search(tail):
        return 1
    return 0


def _plan_cuts(text: str, offsets: list[tuple[int, int]], max_tokens: int, n_chunks: int) -> list[int]:
    """Token indices where chunks start (and ``n`` at the end), aiming at ``n_chunks`` equal chunks."""
    n = len(offsets)
    cuts = [0]
    while n - cuts[-1] > max_tokens:
        start = cuts[-1]
        # Cuts moved back to edges can leave more than the planned chunks' worth of tokens.
        remaining_chunks = max(n_chunks - (len(cuts) - 1), math.ceil((n - start) / max_tokens))
        ideal = min(start + math.ceil((n - start) / remaining_chunks), start + max_tokens)
        lo = max(start + 1, ideal - max_tokens // 4)
        best, best_score = ideal, -1
        for cut in range(ideal, lo - 1, -1):  # later cuts win ties: chunks stay near the ideal size
            pos = offsets[cut][0]
            score = _edge_score(text[max(0, pos - 8) : pos])
            if score > 1 and text[pos - 1 : pos + 1] == "\n\n":  # inside a run of newlines: keep it whole
                score = 1
            if score > best_score:
                best, best_score = cut, score
                if score == 3:
                    break
        cuts.append(best)
    cuts.append(n)
    return cuts


def chunk_text(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``max_tokens`` tokens.

    Raises:
        EmptyDocumentError: the text is empty or whitespace only.
        ValueError: ``max_tokens`` < 1.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not text or not text.strip():
        raise EmptyDocumentError("the document has no text (empty or whitespace only)")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = enc["input_ids"]
    offsets: list[tuple[int, int]] = enc["offset_mapping"]
    n = len(ids)
    # Plan the fewest chunks. If moving cuts back to edges forced extra ones, plan that many
    # from the start (all chunks shrink a little, not the last ones a lot) unless that needs more.
    n_chunks = math.ceil(n / max_tokens)
    cuts = _plan_cuts(text, offsets, max_tokens, n_chunks)
    if len(cuts) - 1 > n_chunks:
        replanned = _plan_cuts(text, offsets, max_tokens, len(cuts) - 1)
        if len(replanned) <= len(cuts):
            cuts = replanned
    chunks = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        c0 = offsets[a][0] if a > 0 else 0
        c1 = offsets[b][0] if b < n else len(text)
        chunks.append(Chunk(index=i, token_ids=ids[a:b], text=text[c0:c1], char_start=c0, char_end=c1))
    return chunks


def iter_chunks(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int,
                segment_chars: int | None = None) -> Iterator[Chunk]:
    """:func:`chunk_text`, one segment of at most about ``segment_chars`` (default ``SEGMENT_CHARS``) characters at a
    time (see the module doc).

    Raises:
        EmptyDocumentError: the text is empty or whitespace only (before any chunk is yielded).
        ValueError: ``max_tokens`` < 1.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not text or not text.strip():
        raise EmptyDocumentError("the document has no text (empty or whitespace only)")
    return _segment_chunks(tokenizer, text, max_tokens, segment_chars or SEGMENT_CHARS)


def _segment_chunks(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int,
                    segment_chars: int) -> Iterator[Chunk]:
    index, start = 0, 0
    while start < len(text):
        end = _segment_end(text, start, segment_chars)
        for c in chunk_text(tokenizer, text[start:end], max_tokens):
            yield Chunk(index=index, token_ids=c.token_ids, text=c.text, char_start=start + c.char_start,
                        char_end=start + c.char_end)
            index += 1
        start = end


def _segment_end(text: str, start: int, limit: int) -> int:
    """Where the segment starting at ``start`` ends: the whole rest when it fits, else in the last quarter of
    ``limit`` before a line break that follows text, else before a space that follows text, else at ``limit``; a
    segment always holds some non-space text (leading whitespace does not count towards ``limit``).
    """
    first = _TEXT.search(text, start)
    begin = first.start() if first else len(text)
    lo, hi = begin + limit * 3 // 4, begin + limit
    if len(text) <= hi or _TEXT.search(text, hi) is None:  # the rest fits, or only whitespace would follow
        return len(text)
    for mark in "\n ":  # a line break, else a space, right after text: where byte-level BPE cuts too
        found = text.rfind(mark, lo, hi)
        while found != -1:
            if not text[found - 1].isspace():
                return found
            found = text.rfind(mark, lo, found)
    return hi

"""Token-based chunking that prefers paragraph and sentence edges.

A document longer than the hypernetwork's training length is split into chunks
of at most ``max_tokens`` base-model tokens. Chunks are roughly equal in size
(so no tiny tail chunk), and each cut is moved back to the nearest paragraph
break, else sentence end, else word boundary, within the last quarter of the
chunk (so a dense text may take a chunk or two more than the minimum). The chunks' token ids concatenate to exactly the document's token ids:
nothing is lost or duplicated.

Example:
    >>> chunks = chunk_text(tokenizer, text, max_tokens=256)  # doctest: +SKIP
    >>> sum((c.token_ids for c in chunks), []) == tokenizer(text, add_special_tokens=False).input_ids  # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from .errors import EmptyDocumentError

_PARAGRAPH = re.compile(r"\n\s*\n\s*$")
_SENTENCE = re.compile(r"[.!?;:][\"')\]]?\s*$")
_SPACE = re.compile(r"\s$")


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

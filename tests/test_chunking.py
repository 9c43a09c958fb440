"""Token chunking: lossless, bounded, balanced, and cut at paragraph or sentence edges."""

from __future__ import annotations

import math
import random
import re

import pytest

from lora_memory.chunking import chunk_text, iter_chunks
from lora_memory.errors import EmptyDocumentError

_WORDS = ["river", "lantern", "copper", "quiet", "market", "seven", "north", "glass", "orchard", "signal"]


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 14))).capitalize() + rng.choice(".!?")


def _prose(n_paragraphs: int, sentences: tuple[int, int], seed: int = 0) -> str:
    rng = random.Random(seed)
    return "\n\n".join(" ".join(_sentence(rng) for _ in range(rng.randint(*sentences))) for _ in range(n_paragraphs))


TEXTS = {
    "prose": _prose(12, (2, 6)),
    "one_paragraph": _prose(1, (40, 40), seed=1),
    "no_punctuation": " ".join(random.Random(2).choice(_WORDS) for _ in range(500)),
    "unicode": ("Zoë’s café — naïve façade. 東京は雨です。 Emoji 😀🎉 and accents: élan, über. " * 20).strip(),
    "adversarial": (("word " * 74).strip() + ". ") * 6,  # sentence ends far apart: cuts cannot all be clean
    "short": "Just one line.",
}


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("max_tokens", [16, 57, 67, 95, 128, 1000])
@pytest.mark.parametrize("name", sorted(TEXTS))
def test_chunks_reassemble_exactly_and_respect_max_tokens(tokenizer, name, max_tokens):
    text = TEXTS[name]
    chunks = chunk_text(tokenizer, text, max_tokens)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [t for c in chunks for t in c.token_ids] == _ids(tokenizer, text)
    assert "".join(c.text for c in chunks) == text
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text)
    for prev, nxt in zip(chunks, chunks[1:]):
        assert prev.char_end == nxt.char_start
    for c in chunks:
        assert 1 <= len(c.token_ids) <= max_tokens
        assert text[c.char_start : c.char_end] == c.text


@pytest.mark.parametrize("max_tokens", [100, 160, 256])
def test_cuts_prefer_paragraph_edges(tokenizer, max_tokens):
    text = _prose(40, (1, 1), seed=3)  # one-sentence paragraphs: a break always lies in the last quarter
    chunks = chunk_text(tokenizer, text, max_tokens)
    assert len(chunks) > 2
    for c in chunks[:-1]:
        assert c.text.endswith("\n\n"), repr(c.text[-30:])
        assert not chunks[c.index + 1].text.startswith("\n"), "a paragraph break was split in two"


@pytest.mark.parametrize("max_tokens", [64, 100, 200])
def test_cuts_fall_back_to_sentence_edges(tokenizer, max_tokens):
    text = TEXTS["one_paragraph"]  # sentences of at most 15 tokens: one always ends in the last quarter
    chunks = chunk_text(tokenizer, text, max_tokens)
    assert len(chunks) > 1
    for c in chunks[:-1]:
        assert re.search(r"[.!?]$", c.text), repr(c.text[-30:])


def test_cuts_without_punctuation_fall_on_word_boundaries(tokenizer):
    text = TEXTS["no_punctuation"]
    for c in chunk_text(tokenizer, text, 50)[:-1]:
        nxt = text[c.char_end : c.char_end + 1]
        assert c.text[-1].isspace() or nxt.isspace(), repr(c.text[-20:])


@pytest.mark.parametrize("name", ["prose", "one_paragraph", "unicode"])
@pytest.mark.parametrize("max_tokens", [64, 100, 256])
def test_chunks_are_roughly_equal_with_no_tiny_tail(tokenizer, name, max_tokens):
    text = TEXTS[name]
    n = len(_ids(tokenizer, text))
    sizes = [len(c.token_ids) for c in chunk_text(tokenizer, text, max_tokens)]
    assert len(sizes) <= math.ceil(4 * n / (3 * max_tokens)), sizes  # at most a third more than the minimum
    assert min(sizes) >= 0.4 * max(sizes), sizes  # edges are preferred over equal sizes, within bounds


def test_short_text_is_one_chunk(tokenizer):
    (chunk,) = chunk_text(tokenizer, TEXTS["short"], 256)
    assert chunk.text == TEXTS["short"] and chunk.char_start == 0


@pytest.mark.parametrize("text", ["", " ", "\n\n\t  \n"])
def test_empty_or_whitespace_raises(tokenizer, text):
    with pytest.raises(EmptyDocumentError):
        chunk_text(tokenizer, text, 64)


def test_max_tokens_must_be_positive(tokenizer):
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_text(tokenizer, "Some text.", 0)


@pytest.mark.parametrize("name", TEXTS)
@pytest.mark.parametrize("segment_chars", [200, 1000, 10**6])
def test_streamed_chunks_cover_the_text_and_its_exact_tokens(tokenizer, name, segment_chars):
    text = TEXTS[name] + "\n\n   \n" if name == "prose" else TEXTS[name]  # trailing whitespace joins the last segment
    chunks = list(iter_chunks(tokenizer, text, 64, segment_chars))
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].char_start == 0 and chunks[-1].char_end == len(text)
    assert all(a.char_end == b.char_start for a, b in zip(chunks, chunks[1:]))
    assert all(text[c.char_start:c.char_end] == c.text and len(c.token_ids) <= 64 for c in chunks)
    assert sum((c.token_ids for c in chunks), []) == tokenizer(text, add_special_tokens=False).input_ids
    if segment_chars > len(text):  # one segment: exactly chunk_text
        assert chunks == chunk_text(tokenizer, text, 64)


def test_streamed_chunks_are_produced_lazily(tokenizer, monkeypatch):
    import lora_memory.chunking as chunking

    seen = []
    real = chunking.chunk_text
    monkeypatch.setattr(chunking, "chunk_text", lambda tok, text, n: seen.append(len(text)) or real(tok, text, n))
    chunks = iter_chunks(tokenizer, _prose(200, (2, 6)), 64, segment_chars=2000)
    next(chunks)
    assert len(seen) == 1 and seen[0] <= 2000  # one segment tokenized, not the whole text


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_streamed_empty_text_raises_before_iterating(tokenizer, text):
    with pytest.raises(EmptyDocumentError):
        iter_chunks(tokenizer, text, 64)

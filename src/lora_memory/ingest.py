"""Internalizing one document into a collection: chunk, look up or encode each chunk, store its adapter.

The document is tokenized and chunked as it is read (:func:`lora_memory.chunking.iter_chunks`,
one segment of text at a time) and processed in batches, so memory stays bounded by the
batch and the segment, whatever the document's length (what grows with it: its text and
one small manifest record per chunk): each batch's adapters come from the collection (already
stored and intact), the shared cache, or one hypernetwork pass, and are written to
the collection's chunk files before the next batch starts; a stored chunk file that
is damaged is written again, so re-ingesting a document repairs it. Nothing here touches the
manifest: the caller commits the returned record, which makes the document
appear all at once. An interrupted ingest leaves its encoded chunks in the
shared cache, so running it again resumes where it stopped. The step "chunks -> adapters in the
shared cache" (:func:`encode_into_cache`) is also what parallel-ingest workers run
(:mod:`lora_memory.parallel`); Ray actors run "chunks -> chunk files' bytes" (:func:`encode_chunks`)
and send those to the writer (:mod:`lora_memory.ray_ingest`).

Progress: a bar on stderr from the first moment (in characters) when asked for and
stderr is a terminal; otherwise progress is logged (INFO, ``lora_memory.ingest``) at the
start, every ``PROGRESS_LOG_S`` seconds and at the end.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import sys
import time
from collections.abc import Iterator, Mapping, Sequence

from tqdm.auto import tqdm

from .adapter import LoRAAdapter
from .base import LoadedModel
from .cache import AdapterCache, CacheEntry
from .chunking import Chunk, iter_chunks
from .collection import SNIPPET_CHARS, ChunkRecord, Collection, DocumentRecord
from .errors import EmptyDocumentError
from .hypernet import DocToLoRA
from .loaders import LoadedDocument
from .storage import chunk_file_bytes

logger = logging.getLogger(__name__)

PROGRESS_LOG_S = 10.0  # seconds between progress log lines when no bar is shown


def content_sha256(text: str) -> str:
    """Checksum of a document's text, recorded to skip re-ingesting an unchanged document."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def ingest_document(doc: LoadedDocument, *, base: LoadedModel, hypernet: DocToLoRA, cache: AdapterCache,
                    collection: Collection, chunk_tokens: int, batch_size: int,
                    progress: bool = False, written: Mapping[str, str] | None = None) -> DocumentRecord:
    """Store every chunk adapter of ``doc`` in ``collection`` and return its (uncommitted) manifest record.

    Call while holding ``collection.locked()``. ``written`` (key -> file checksum) names chunk files
    written for records not committed yet; like the manifest's, they are reused, not rewritten.

    Raises:
        EmptyDocumentError: the document has no text.
    """
    batches = chunk_batches(doc.doc_id, doc.text, base, chunk_tokens, batch_size)
    records: list[ChunkRecord] = []
    checksums = {**collection.chunk_checksums(), **(written or {})}  # grows as this document's chunks are written
    show_bar = progress and sys.stderr.isatty()
    log = _ProgressLog(doc.doc_id, len(doc.text), enabled=progress and not show_bar)
    with tqdm(total=len(doc.text), desc=f"internalizing {doc.doc_id}", unit="char", unit_scale=True,
              disable=not show_bar) as bar:
        done = 0
        for batch in batches:
            records.extend(_store_batch(batch, base, hypernet, cache, collection, checksums))
            bar.update(batch[-1].char_end - done)
            bar.set_postfix(chunks=len(records), refresh=False)
            done = batch[-1].char_end
            log.update(done, len(records))
    log.done(len(records))
    return DocumentRecord(doc_id=doc.doc_id, source=doc.source, metadata=dict(doc.metadata), added_at=time.time(),
                          content_sha256=content_sha256(doc.text), chunk_tokens=chunk_tokens, chunks=records)


def chunk_batches(doc_id: str, text: str, base: LoadedModel, chunk_tokens: int,
                  batch_size: int) -> Iterator[list[Chunk]]:
    """The chunks of a document's ``text``, ``batch_size`` at a time (lazily: one segment of text at a time).

    Raises:
        EmptyDocumentError: the document has no text (at once, before any batch).
    """
    try:
        chunks = iter_chunks(base.tokenizer, text, chunk_tokens)
    except EmptyDocumentError as exc:
        raise EmptyDocumentError(f"document {doc_id!r}: {exc}") from exc
    return iter(lambda: list(itertools.islice(chunks, batch_size)), [])


def chunk_keys(chunks: Sequence[Chunk], base: LoadedModel, hypernet: DocToLoRA) -> list[str]:
    """The content-addressed cache keys of ``chunks`` (for these models and the base model's dtype)."""
    dtype = str(base.dtype).removeprefix("torch.")
    return [AdapterCache.key(hypernet.fingerprint, base.fingerprint, c.token_ids, dtype) for c in chunks]


def encode_into_cache(chunks: Mapping[str, Chunk], base: LoadedModel, hypernet: DocToLoRA,
                      cache: AdapterCache) -> dict[str, CacheEntry]:
    """The cache entries of ``chunks`` (cache key -> chunk): hits as they are, misses encoded in one
    hypernetwork pass and put into the cache first.

    Raises:
        diskcache.Timeout: the cache stayed locked by another process (see :class:`AdapterCache`).
    """
    entries = {k: cache.get_entry(k) for k in chunks}
    missing = {k: chunks[k] for k, e in entries.items() if e is None}
    if missing:
        for k, payload in encode_chunks(missing, base, hypernet).items():
            entries[k] = cache.put_payload(k, payload)
    return {k: e for k, e in entries.items() if e is not None}  # every entry is filled by now


def encode_chunks(chunks: Mapping[str, Chunk], base: LoadedModel, hypernet: DocToLoRA) -> dict[str, bytes]:
    """The chunk files' bytes of ``chunks`` (cache key -> chunk, at least one), encoded in one hypernetwork pass:
    what the cache stores for them (:meth:`AdapterCache.put_payload`), wherever they were encoded.
    """
    encoded = hypernet.adapters_for_chunks(base, list(chunks.values()), batch_size=len(chunks))
    return {k: chunk_file_bytes(_plain(adapter, base, hypernet), chunk.text)
            for (k, chunk), adapter in zip(chunks.items(), encoded)}


class _ProgressLog:
    """Progress log lines of one document's ingest (when no bar shows it): at the start, every ``PROGRESS_LOG_S``
    seconds, at the end.
    """

    def __init__(self, doc_id: str, total_chars: int, enabled: bool):
        self.doc_id, self.total, self.enabled = doc_id, total_chars, enabled
        self.start = self.last = time.monotonic()
        if enabled:
            logger.info("internalizing %r: %d characters", doc_id, total_chars)

    def update(self, chars: int, chunks: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= PROGRESS_LOG_S:
            self.last = now
            logger.info("internalizing %r: %d of %d characters (%.0f%%), %d chunks, %.0f s", self.doc_id, chars,
                        self.total, 100 * chars / self.total, chunks, now - self.start)

    def done(self, chunks: int) -> None:
        if self.enabled:
            logger.info("internalized %r: %d chunks in %.1f s", self.doc_id, chunks, time.monotonic() - self.start)


class IngestProgress:
    """Progress of one ingest call over many documents: documents done, tokens encoded per second, and an ETA when
    the number of documents is known. A tqdm bar when ``enabled`` and stderr is a terminal; otherwise (enabled)
    a log line every ``PROGRESS_LOG_S`` seconds and one at the end. Unchanged documents count as done, not encoded.
    """

    def __init__(self, enabled: bool, total: int | None = None):
        self.enabled, self.total = enabled, total
        self.docs = self.encoded = self.tokens = 0
        self.start = self.last = time.monotonic()
        self.bar = tqdm(total=total, desc="ingest", unit="doc") if enabled and sys.stderr.isatty() \
            else None

    def __enter__(self) -> IngestProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.docs > 1:
            logger.info("ingest: %s", self.summary())

    def document(self, tokens: int, encoded: bool) -> None:
        """One more document done; ``tokens`` of it were encoded (0 when it was unchanged)."""
        self.docs += 1
        self.encoded += encoded
        self.tokens += tokens
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.tokens_per_s():.0f} tok/s, {self.encoded} encoded", refresh=False)
            self.bar.update(1)
        elif self.enabled and time.monotonic() - self.last >= PROGRESS_LOG_S:
            self.last = time.monotonic()
            logger.info("ingest: %s", self.summary())

    def tokens_per_s(self) -> float:
        """Tokens encoded per second since the ingest started."""
        return self.tokens / max(1e-9, time.monotonic() - self.start)

    def summary(self) -> str:
        """One line: documents done (of how many), encoded, tokens, tokens per second, seconds."""
        done = f"{self.docs}" + (f" of {self.total}" if self.total else "")
        return (f"{done} documents ({self.encoded} encoded), {self.tokens} tokens, {self.tokens_per_s():.0f} tok/s, "
                f"{time.monotonic() - self.start:.0f} s")


def _store_batch(batch: list[Chunk], base: LoadedModel, hypernet: DocToLoRA, cache: AdapterCache,
                 collection: Collection, checksums: dict[str, str]) -> list[ChunkRecord]:
    """Records for ``batch``; chunk files not in ``checksums`` are written and added to it.

    Cache hits are written into the collection byte for byte; only misses go
    through the hypernetwork (and into the cache). A file in ``checksums`` that is
    damaged is rebuilt the same way.
    """
    keys = chunk_keys(batch, base, hypernet)
    needed = {k: c for k, c in zip(keys, batch)  # a dict: also drops repeats within the batch
              if k not in checksums or collection.chunk_damage(k, checksums[k]) is not None}
    stored = encode_into_cache(needed, base, hypernet, cache)
    collection.write_chunks({k: e.payload for k, e in stored.items()})
    checksums.update({k: e.sha256 for k, e in stored.items()})
    return [ChunkRecord(key=k, sha256=checksums[k], char_start=c.char_start, char_end=c.char_end,
                        n_tokens=len(c.token_ids), snippet=c.text[:SNIPPET_CHARS])
            for k, c in zip(keys, batch)]


def _plain(adapter: LoRAAdapter, base: LoadedModel, hypernet: DocToLoRA) -> LoRAAdapter:
    """The adapter as stored: on the CPU, in the base model's dtype (the dtype it is applied in, so storing
    it costs no precision at query time), with only position-independent metadata (equal chunks, equal bytes).
    """
    meta = {"base_model": base.name, "base_fingerprint": base.fingerprint,
            "hypernet_fingerprint": hypernet.fingerprint}
    return LoRAAdapter(adapter.to("cpu", dtype=base.dtype).weights, adapter.scaling, meta)

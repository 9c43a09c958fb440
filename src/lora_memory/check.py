"""Checking a collection's chunk files and repairing damaged documents (``lora-memory check [--repair]``).

A document is damaged when one of its chunk files is missing, unreadable, fails
the checksum the manifest records, or lacks a chunk file's header. Checking reads
every chunk file and writes nothing. Repairing rebuilds each damaged document,
first from the shared adapter cache (its entries are the chunk files' exact
bytes), else by re-adding its source file when that file still holds the text the
manifest records; a document neither way can rebuild is reported and kept, never
removed.

Example:
    >>> report = LoRAMemory.open("notes").check(repair=True)  # doctest: +SKIP
    >>> report.ok, [d.doc_id for d in report.damaged]  # doctest: +SKIP
    (True, ['handbook.pdf'])
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import BaseModel, Field

from .cache import AdapterCache
from .collection import Collection, DocumentRecord
from .errors import LoRAMemoryError
from .ingest import content_sha256
from .loaders import LoadedDocument, load_file

logger = logging.getLogger(__name__)

RACE_RETRIES = 2  # re-checks when a writer replaced the manifest while the chunk files were being read


class DamagedDocument(BaseModel):
    """A document with at least one unusable chunk file."""

    doc_id: str
    chunks: dict[str, str] = Field(description="Damaged chunk key -> what is wrong with its file.")
    repaired: str | None = Field(None, description="How it was rebuilt; None when it was not (yet).")


class CheckReport(BaseModel):
    """What :func:`check_collection` found (and, after a repair, what was rebuilt)."""

    collection: str
    documents: int
    chunk_files: int = Field(description="Distinct chunk files the manifest refers to.")
    damaged: list[DamagedDocument]

    @property
    def ok(self) -> bool:
        """True when no document is damaged, or every damaged one was repaired."""
        return all(d.repaired is not None for d in self.damaged)


def check_collection(collection: Collection) -> CheckReport:
    """Read every chunk file of ``collection`` and report the damaged documents; writes nothing.

    Takes no lock: a check that raced a writer (the manifest changed meanwhile) is run
    again on the new manifest.

    Raises:
        CorruptManifestError: the manifest is not a valid manifest.
    """
    collection.refresh()
    for attempt in range(RACE_RETRIES + 1):
        damaged = collection.verify()
        if not collection.refresh() or attempt == RACE_RETRIES:
            break
    return CheckReport(collection=collection.name, documents=len(collection.documents),
                       chunk_files=len(collection.chunk_checksums()),
                       damaged=[DamagedDocument(doc_id=d, chunks=c) for d, c in damaged.items()])


def repair_document(collection: Collection, cache: AdapterCache, damaged: DamagedDocument,
                    store: Callable[[LoadedDocument], None]) -> str | None:
    """Rebuild one damaged document (call inside the collection's writer lock); returns how, or None.

    ``store`` re-adds a document (the memory's ingest), used when the cache lacks a chunk.
    """
    record = collection.record(damaged.doc_id)
    entries = {key: cache.get_entry(key) for key in damaged.chunks}
    found = {key: entry for key, entry in entries.items() if entry is not None}
    if len(found) == len(entries):
        collection.write_chunks({key: entry.payload for key, entry in found.items()})
        chunks = [c.model_copy(update={"sha256": found[c.key].sha256}) if c.key in found else c
                  for c in record.chunks]
        collection.commit(record.model_copy(update={"chunks": chunks}))
        return "from the adapter cache"
    doc = source_document(record)
    if doc is not None:
        store(doc)
        return f"re-ingested from {record.source}"
    logger.warning("document %r cannot be repaired: its chunks are not all in the adapter cache and its source (%s) "
                   "no longer holds its text; re-add it or remove it", damaged.doc_id, record.source)
    return None


def source_document(record: DocumentRecord) -> LoadedDocument | None:
    """The document as its source file holds it now, or None when there is no such file or its text changed."""
    if record.source is None:
        return None
    try:
        text = load_file(record.source)
    except (LoRAMemoryError, OSError):
        return None
    if content_sha256(text) != record.content_sha256:
        return None
    return LoadedDocument(record.doc_id, text, record.source, record.metadata)


"""A collection on disk: its manifest, its chunk adapters, and the lock its writers share.

Layout of a collection directory::

    manifest.json            documents -> chunks (cache key, file checksum, char span, snippet),
                             metadata, source, added_at; the models' fingerprints; a revision
    adapters/<key>.safetensors   one file per distinct chunk: the adapter and the chunk's text
    routing.sqlite           the BM25 routing index of the chunks' text (derived data, see routing_index)
    .lock                    held by a writer for the whole of an add/update/delete
    manifest.json.*.tmp      a manifest being written (left only by a killed writer; removed by the next one)

The collection keeps its own copy of every chunk adapter (content-addressed by
the same key as the shared cache), so it survives cache eviction. ``manifest.json``
is the commit point: it is replaced atomically after a document's chunk files
are written, so a crash leaves the document either fully present or absent.
Chunk files no manifest entry refers to (left by a crash, or by a delete), and
temporary files a killed writer left, are swept when the next writer takes the lock
and after every commit. A writer waits for another's lock at most ``lock_timeout_s``
seconds, saying so (a warning) when it starts waiting. Readers take no lock: they
reload the manifest when its file changes.

The manifest is parsed strictly: a missing, unknown or mistyped key, a chunk key
that is not 64 hex digits, or an id that disagrees with its entry raises
:class:`~lora_memory.errors.CorruptManifestError`, and no writer proceeds (so
nothing is committed over it and no chunk file is swept). A damaged chunk file is
confined to the documents that use it: :meth:`Collection.damaged_chunks` and
:meth:`Collection.verify` name them.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .adapter import LoRAAdapter
from .config import DEFAULT_LOCK_TIMEOUT_S
from .errors import (
    CollectionError,
    CorruptEntryError,
    CorruptManifestError,
    DocumentNotFoundError,
    IncompatibleAdapterError,
)
from .routing import BM25Index, Ranker
from .routing_index import INDEX_NAME, RoutingIndex
from .storage import (
    CHUNK_TEXT_KEY,
    TMP_SUFFIX,
    adapter_from_bytes,
    atomic_write,
    atomic_write_many,
    check_chunk_file_header,
    read_safetensors_metadata,
    sha256,
)

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
ADAPTERS_DIR = "adapters"
LOCK_NAME = ".lock"
CHUNK_SUFFIX = ".safetensors"
MANIFEST_VERSION = 1
SNIPPET_CHARS = 200
KEY_PATTERN = r"^[0-9a-f]{64}$"  # a sha256: a chunk key can never name a path outside adapters/
# Every key required, no unknown key, no type coercion: a manifest edited by hand or by a newer
# version is refused with a clear error instead of being read as a smaller collection.
_STRICT = ConfigDict(extra="forbid", strict=True)


class ChunkRecord(BaseModel):
    """One chunk of a document as the manifest records it."""

    model_config = _STRICT

    key: str = Field(pattern=KEY_PATTERN, description="Content key (shared with the adapter cache) and file "
                                                      "name stem.")
    sha256: str = Field(description="Checksum of the chunk's adapter file.")
    char_start: int
    char_end: int
    n_tokens: int
    snippet: str = Field(description=f"The chunk's first {SNIPPET_CHARS} characters.")


class DocumentInfo(BaseModel):
    """What the memory knows about a stored document."""

    doc_id: str
    n_chunks: int
    n_tokens: int
    metadata: dict[str, Any]
    source: str | None
    added_at: float = Field(description="Unix time the current version was ingested.")


class DocumentRecord(BaseModel):
    """A document's manifest entry."""

    model_config = _STRICT

    doc_id: str = Field(min_length=1)
    source: str | None
    metadata: dict[str, Any]
    added_at: float
    content_sha256: str = Field(description="Checksum of the text, to skip re-ingesting an unchanged document.")
    chunk_tokens: int = Field(description="Chunk length the document was split with.")
    chunks: list[ChunkRecord]

    def info(self) -> DocumentInfo:
        """The public summary of this document."""
        return DocumentInfo(doc_id=self.doc_id, n_chunks=len(self.chunks),
                            n_tokens=sum(c.n_tokens for c in self.chunks), metadata=self.metadata,
                            source=self.source, added_at=self.added_at)


class Manifest(BaseModel):
    """The collection's index, saved as ``manifest.json``. Every key is required (see :meth:`new`)."""

    model_config = _STRICT

    format_version: int
    name: str
    base_model: str | None
    base_fingerprint: str | None
    hypernet_fingerprint: str | None
    revision: int = Field(ge=0, description="Incremented by every commit.")
    documents: dict[str, DocumentRecord]

    @classmethod
    def new(cls, name: str) -> Manifest:
        """The manifest of an empty collection."""
        return cls(format_version=MANIFEST_VERSION, name=name, base_model=None, base_fingerprint=None,
                   hypernet_fingerprint=None, revision=0, documents={})

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.format_version != MANIFEST_VERSION:
            raise ValueError(f"format_version {self.format_version} is not {MANIFEST_VERSION}, the version this "
                             "lora-memory reads (was it written by another version?)")
        for doc_id, record in self.documents.items():
            if record.doc_id != doc_id:
                raise ValueError(f"documents[{doc_id!r}] holds the record of {record.doc_id!r}")
        return self


class Collection:
    """The on-disk state of one collection (no models needed: listing and deleting work without them).

    Args:
        directory: the collection directory (created on first write).
        name: recorded in the manifest of a new collection.
        lock_timeout_s: how long :meth:`locked` waits for another writer (None: for ever).

    Raises:
        CorruptManifestError: ``manifest.json`` exists but is not a valid manifest.
    """

    def __init__(self, directory: str | Path, name: str | None = None,
                 lock_timeout_s: float | None = DEFAULT_LOCK_TIMEOUT_S):
        self.directory = Path(directory)
        self.name = name or self.directory.name
        self.lock_timeout_s = lock_timeout_s
        self._lock = FileLock(str(self.directory / LOCK_NAME))  # touches the disk only when acquired
        self.routing = RoutingIndex(self.directory / INDEX_NAME)  # opened on first use
        self._stat: tuple[int, int, int] | None = None
        self.manifest = Manifest.new(self.name)
        self.refresh()

    @classmethod
    def existing(cls, directory: str | Path) -> Collection:
        """Open a collection that must already exist.

        Raises:
            CollectionError: ``directory`` holds no collection.
            CorruptManifestError: its manifest is not a valid manifest.
        """
        directory = Path(directory)
        if not (directory / MANIFEST_NAME).is_file():
            raise CollectionError(f"no collection at {directory}")
        return cls(directory)

    # ---------------------------------------------------------------- reading
    @property
    def manifest_path(self) -> Path:
        """The collection's manifest file."""
        return self.directory / MANIFEST_NAME

    @property
    def documents(self) -> dict[str, DocumentRecord]:
        """Documents by id, in insertion order."""
        return self.manifest.documents

    def refresh(self, force: bool = False) -> bool:
        """Reload the manifest if another writer replaced it (or always, with ``force``); returns whether it did.

        Raises:
            CorruptManifestError: the manifest is not a valid manifest (nothing is changed on disk).
        """
        stat = self._manifest_stat()
        if stat is None or (stat == self._stat and not force):
            return False
        try:
            self.manifest = Manifest.model_validate_json(self.manifest_path.read_bytes())
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}"
                                 for e in exc.errors()[:3])
            raise CorruptManifestError(
                f"{self.manifest_path} is not a valid manifest ({problems}); nothing was changed or deleted. "
                "Restore the file (or undo the edit) before using this collection") from exc
        self._stat = stat
        return True

    def _manifest_stat(self) -> tuple[int, int, int] | None:
        """Identity of the manifest file: a writer's ``os.replace`` always changes it."""
        try:
            st = self.manifest_path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def record(self, doc_id: str) -> DocumentRecord:
        """The manifest entry of ``doc_id``.

        Raises:
            DocumentNotFoundError: no such document.
        """
        try:
            return self.documents[doc_id]
        except KeyError:
            raise DocumentNotFoundError(f"collection {self.name!r} has no document {doc_id!r}") from None

    def chunk_path(self, key: str) -> Path:
        """The file that holds chunk ``key``'s adapter."""
        return self.directory / ADAPTERS_DIR / f"{key}{CHUNK_SUFFIX}"

    def chunk_checksums(self) -> dict[str, str]:
        """Key -> file checksum of every chunk the manifest refers to."""
        return {c.key: c.sha256 for d in self.documents.values() for c in d.chunks}

    def read_chunk(self, chunk: ChunkRecord, device: str | torch.device = "cpu") -> LoRAAdapter:
        """A chunk's adapter on ``device``, checked against the manifest's checksum (nothing unverified is parsed).

        Raises:
            FileNotFoundError: the file is gone (a concurrent delete; refresh and retry).
            CorruptEntryError: the file fails its checksum or cannot be parsed.
        """
        path = self.chunk_path(chunk.key)
        data = path.read_bytes()
        if sha256(data) != chunk.sha256:
            raise CorruptEntryError(f"{path} fails its checksum")
        return adapter_from_bytes(data, device)

    def chunk_damage(self, key: str, checksum: str) -> str | None:
        """Why chunk ``key``'s file is unusable (missing, unreadable, not ``checksum``, no chunk header), or None."""
        path = self.chunk_path(key)
        try:
            data = path.read_bytes()
        except OSError as exc:
            return f"{path.name} cannot be read ({exc.strerror or exc})"
        if sha256(data) != checksum:
            return f"{path.name} fails its checksum"
        try:
            check_chunk_file_header(data)
        except CorruptEntryError as exc:
            return f"{path.name}: {exc}"
        return None

    def damaged_chunks(self, record: DocumentRecord) -> dict[str, str]:
        """Key -> reason for every damaged chunk file of a document (empty when all are intact)."""
        return {c.key: reason for c in record.chunks if (reason := self.chunk_damage(c.key, c.sha256)) is not None}

    def verify(self) -> dict[str, dict[str, str]]:
        """Doc id -> its damaged chunks (:meth:`damaged_chunks`) for every damaged document; reads every chunk file."""
        damaged = {}
        for doc_id, record in self.documents.items():
            if found := self.damaged_chunks(record):
                damaged[doc_id] = found
        return damaged

    def read_chunk_text(self, key: str) -> str:
        """A chunk's full text, read from its adapter file's header only.

        Raises:
            FileNotFoundError: the file is gone.
            CorruptEntryError: the header cannot be parsed or lacks the text.
        """
        try:
            return read_safetensors_metadata(self.chunk_path(key))[CHUNK_TEXT_KEY]
        except KeyError:
            raise CorruptEntryError(f"{self.chunk_path(key)} has no chunk text") from None

    def ranker(self, keys: list[str]) -> tuple[Ranker, dict[str, str]]:
        """A BM25 ranker over the chunks ``keys`` (in routing order), and key -> reason for those left out because
        their file cannot give its text (missing, damaged). Chunks the routing index lacks are added to it first;
        if the index cannot be opened or written (a read-only directory, a lock held too long), the chunks'
        texts are ranked in memory instead, with a warning.
        """
        bad: dict[str, str] = {}
        if not keys:
            return BM25Index([]), bad
        try:
            self.routing.ensure(keys, self.read_chunk_text, unreadable=bad)
            try:
                return self.routing.ranker([k for k in keys if k not in bad]), bad
            except KeyError:  # the index file was found unusable and recreated meanwhile: index once more
                self.routing.ensure(keys, self.read_chunk_text, unreadable=bad)
                return self.routing.ranker([k for k in keys if k not in bad]), bad
        except sqlite3.OperationalError as exc:
            logger.warning("collection %r: routing index %s unavailable (%s); ranking in memory", self.name,
                           self.routing.path, exc)
            texts = {}
            for key in keys:
                try:
                    texts[key] = self.read_chunk_text(key)
                except (OSError, CorruptEntryError) as err:
                    bad[key] = str(err)
            return BM25Index([texts[k] for k in keys if k in texts]), bad

    def check_models(self, base_name: str, base_fingerprint: str, hypernet_fingerprint: str) -> None:
        """Raise unless the collection is empty or was built with these models.

        Raises:
            IncompatibleAdapterError: recorded fingerprints differ from the given ones.
        """
        m = self.manifest
        if not m.documents:
            return
        if (m.base_fingerprint, m.hypernet_fingerprint) != (base_fingerprint, hypernet_fingerprint):
            raise IncompatibleAdapterError(
                f"collection {self.name!r} was built with base model {m.base_model!r} (fingerprint "
                f"{m.base_fingerprint}) and hypernetwork {m.hypernet_fingerprint}, but the loaded models are "
                f"{base_name!r} ({base_fingerprint}) and hypernetwork {hypernet_fingerprint}. Open it with the "
                "models it was built with, or ingest the documents into a new collection."
            )

    # ---------------------------------------------------------------- writing
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the collection's writer lock (across processes); reload the manifest and sweep orphans first.

        Raises:
            CollectionError: the directory cannot be created, or another writer held the lock
                for ``lock_timeout_s`` seconds.
        """
        try:
            (self.directory / ADAPTERS_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CollectionError(f"cannot create collection directory {self.directory}: {exc}") from exc
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            limit = "for ever" if self.lock_timeout_s is None else f"up to {self.lock_timeout_s:g} s"
            logger.warning("collection %r is being written by another process: waiting %s for it to finish "
                           "(MemoryConfig.lock_timeout_s)", self.name, limit)
            try:
                self._lock.acquire(timeout=-1 if self.lock_timeout_s is None else self.lock_timeout_s)
            except Timeout as exc:
                raise CollectionError(
                    f"collection {self.name!r} stayed locked by another writer for {self.lock_timeout_s:g} s "
                    f"({self._lock.lock_file}); nothing was changed. Retry when it has finished, or raise "
                    "MemoryConfig.lock_timeout_s") from exc
        try:
            self.refresh(force=True)  # a writer must never build on a stale manifest
            if self._lock.lock_counter == 1:  # the outermost holder: nobody is mid-write
                self._sweep()
            yield
        finally:
            self._lock.release()

    def write_chunks(self, files: Mapping[str, bytes]) -> None:
        """Write chunk files (key -> :func:`lora_memory.storage.chunk_file_bytes`), atomically, one directory fsync.

        Call inside :meth:`locked`, for keys the manifest does not hold yet or whose files
        are damaged (intact files must not change under readers).
        """
        atomic_write_many({self.chunk_path(key): data for key, data in files.items()})

    def commit(self, *records: DocumentRecord, remove: str | None = None,
               models: dict[str, str] | None = None) -> None:
        """Add or replace ``records`` and/or remove document ``remove``, then write the manifest atomically (once).

        Call inside :meth:`locked`. ``models`` (``base_model``, ``base_fingerprint``,
        ``hypernet_fingerprint``) stamps the manifest. Other documents sharing one of
        a record's chunks take its checksum: a rebuilt chunk file is theirs too.
        """
        manifest = self.manifest.model_copy(deep=True)
        if remove is not None:
            manifest.documents.pop(remove, None)
        checksums = {c.key: c.sha256 for record in records for c in record.chunks}
        for record in records:
            manifest.documents[record.doc_id] = record
        if checksums:
            for doc in manifest.documents.values():
                for chunk in doc.chunks:
                    chunk.sha256 = checksums.get(chunk.key, chunk.sha256)
        if models:
            manifest = manifest.model_copy(update=models)
        manifest.revision += 1
        # the index holds every chunk of a committed manifest (routing_index)
        self.routing.ensure((c.key for record in records for c in record.chunks), self.read_chunk_text)
        atomic_write(self.manifest_path, manifest.model_dump_json(indent=1).encode("utf-8"))
        self.manifest = manifest
        self._stat = self._manifest_stat()
        self._sweep()

    def remove(self, doc_id: str) -> None:
        """Delete a document and the chunk files only it used.

        Raises:
            DocumentNotFoundError: no such document.
        """
        with self.locked():
            self.record(doc_id)
            self.commit(remove=doc_id)

    def _sweep(self) -> None:
        """Delete chunk files the manifest does not refer to, and leftover temporary files (chunks', manifest's)."""
        keep = {f"{key}{CHUNK_SUFFIX}" for key in self.chunk_checksums()}
        removed = 0
        for path in (self.directory / ADAPTERS_DIR).iterdir():
            if path.name not in keep and (path.suffix == CHUNK_SUFFIX or path.name.endswith(TMP_SUFFIX)):
                path.unlink(missing_ok=True)
                removed += 1
        for path in self.directory.glob(f"{MANIFEST_NAME}.*{TMP_SUFFIX}"):  # atomic_write's names for the manifest
            path.unlink(missing_ok=True)
            removed += 1
        if removed:
            logger.debug("collection %r: removed %d unreferenced files", self.name, removed)
        self.routing.retain(self.chunk_checksums())


def chunk_keys_in_use(root: str | Path) -> set[str]:
    """The chunk keys of every collection under ``root`` (what :meth:`AdapterCache.prune` must keep).

    Raises:
        CorruptManifestError: a collection's manifest is not a valid manifest (its keys are unknown).
    """
    return {key for name in list_collections(root) for key in Collection(Path(root) / name).chunk_checksums()}


def list_collections(root: str | Path) -> list[str]:
    """Names of the collections (directories holding a manifest) under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file())


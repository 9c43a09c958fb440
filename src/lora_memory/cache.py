"""The content-addressed adapter cache shared by every collection and process.

A chunk's adapter depends only on the hypernetwork, the base model, the dtype it
is stored in and the chunk's token ids, so those (hashed) are the key: the same
chunk is never encoded twice, whichever collection or process asks. Storage is
:class:`diskcache.Cache` (SQLite index, process-safe, size-limited with
least-recently-used eviction) with :class:`BytesDisk`, which stores and returns
raw bytes only: diskcache's pickle (and text) modes are refused in both directions,
so an entry planted by anyone else is a miss, never code that runs. Values are
bytes: a sha256 digest of
the payload followed by the payload, a chunk file's exact bytes (safetensors with
the adapter's JSON config and the chunk's text,
:func:`lora_memory.storage.chunk_file_bytes`). A hit therefore goes into a
collection as it is, its digest doubling as the collection's file checksum. An
entry that fails its checksum or whose header cannot be parsed is logged, deleted
and reported as a miss, so it is simply encoded again.

What the cache keeps: one entry per distinct chunk ever encoded, holding that chunk's
adapter *and its full text in plain text* (the chunk file's header), until it is evicted
(least recently used first, past ``size_limit_bytes``, 4 GiB by default) or removed with
:meth:`AdapterCache.clear` / :meth:`AdapterCache.prune` (``lora-memory cache clear|prune``).
Removing or updating a document does not remove its entries: other collections may
share them, and re-adding the text costs no encoding. Collections keep their own chunk
files, so clearing the cache loses no document.

Example:
    >>> cache = AdapterCache(tmp_dir)  # doctest: +SKIP
    >>> key = AdapterCache.key(hypernet.fingerprint, base.fingerprint, chunk.token_ids, "bfloat16")  # doctest: +SKIP
    >>> cache.get_entry(key) or cache.put(key, adapter, chunk.text)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Sequence, Set
from pathlib import Path
from typing import NamedTuple, cast

import diskcache
from diskcache.core import MODE_BINARY, MODE_RAW, UNKNOWN

from .adapter import LoRAAdapter
from .config import DEFAULT_CACHE_SIZE_LIMIT
from .errors import CorruptEntryError
from .paths import adapter_cache_dir
from .storage import adapter_from_bytes, check_chunk_file_header, chunk_file_bytes

logger = logging.getLogger(__name__)

DIGEST_BYTES = 32  # sha256
EVICTION_POLICY = "least-recently-used"
SQLITE_TIMEOUT_S = 60  # seconds a process waits for another's write transaction
KEY_VERSION = 2  # bumped when the entry format changes, so old entries are never read (2: chunk-file bytes)


class BytesDisk(diskcache.Disk):
    """diskcache serialization that only ever stores and returns ``bytes`` (values) and ``str`` (keys).

    Nothing is pickled on the way in, and a value stored by another writer in pickle
    or text mode (or holding a number) is refused on the way out with
    :class:`CorruptEntryError` before any of it is decoded; a key stored pickled is
    listed as its undecoded bytes (so it matches no lookup, and ``clear`` removes it).
    """

    def put(self, key: object) -> tuple[object, bool]:
        """Key serialisation as diskcache does it, for str keys only."""
        if type(key) is not str:
            raise TypeError(f"adapter cache keys are str, not {type(key).__name__}")
        return super().put(key)

    def get(self, key: object, raw: bool) -> object:
        """Key deserialisation as diskcache does it."""
        if not raw:  # a key stored pickled (planted: this class never writes one) stays undecoded bytes
            return bytes(cast(bytes, key))
        return super().get(key, raw)

    def store(self, value: object, read: bool, key: object = UNKNOWN) -> tuple[int, int, str | None, object]:
        """Store safetensors bytes as they are; anything else is refused (nothing is ever pickled)."""
        if read or type(value) is not bytes:
            raise TypeError(f"the adapter cache stores bytes only, not {type(value).__name__}")
        return super().store(value, read, key)

    def fetch(self, mode: int, filename: str | None, value: object, read: bool) -> bytes:
        """The stored bytes, as they were written."""
        if read or mode not in (MODE_RAW, MODE_BINARY):
            raise CorruptEntryError(f"a cache value stored in diskcache mode {mode} (not raw bytes) is refused")
        data = super().fetch(mode, filename, value, read)
        if type(data) is not bytes:
            raise CorruptEntryError(f"a cache value holding {type(data).__name__}, not bytes, is refused")
        return data


class CacheEntry(NamedTuple):
    """A verified cache value: a chunk file's bytes and their sha256 (hex)."""

    payload: bytes
    sha256: str


class AdapterCache:
    """Chunk adapters on disk, keyed by content, bounded in size.

    Args:
        directory: where the cache lives; None means :func:`lora_memory.paths.adapter_cache_dir`.
        size_limit_bytes: total size before least-recently-used entries are evicted.

    Raises:
        OSError: the directory cannot be created or opened.
    """

    def __init__(self, directory: str | Path | None = None, size_limit_bytes: int = DEFAULT_CACHE_SIZE_LIMIT):
        self.directory = Path(directory) if directory is not None else adapter_cache_dir()
        # secure_delete: SQLite zeroes a removed entry's pages, so a pruned chunk's text does not linger in the file
        self._cache = diskcache.Cache(str(self.directory), size_limit=size_limit_bytes, disk=BytesDisk,
                                      eviction_policy=EVICTION_POLICY, timeout=SQLITE_TIMEOUT_S,
                                      sqlite_secure_delete=1)

    @staticmethod
    def key(hypernet_fingerprint: str, base_fingerprint: str, token_ids: Sequence[int], dtype: str) -> str:
        """The cache key of a chunk: sha256 over both fingerprints, the storage dtype and the token ids (64 hex)."""
        h = hashlib.sha256(f"v{KEY_VERSION}:{hypernet_fingerprint}:{base_fingerprint}:{dtype}:".encode())
        h.update(array("q", token_ids).tobytes())
        return h.hexdigest()

    def get_entry(self, key: str) -> CacheEntry | None:
        """The verified chunk-file bytes stored under ``key``, or None on a miss.

        A corrupt or truncated entry, or one not stored as raw bytes (never decoded), is
        logged, deleted and reported as a miss.

        Raises:
            diskcache.Timeout: the cache stayed locked by another process for ``SQLITE_TIMEOUT_S``.
        """
        try:
            blob = self._cache.get(key, retry=True)
            if blob is None:
                return None
            return _verify(blob)
        except CorruptEntryError as exc:
            logger.warning("adapter cache entry %s is corrupt (%s); deleting it, it will be re-encoded", key[:12], exc)
            self._cache.delete(key, retry=True)
            return None

    def get(self, key: str) -> LoRAAdapter | None:
        """The adapter stored under ``key``, or None on a miss (see :meth:`get_entry`)."""
        entry = self.get_entry(key)
        return None if entry is None else adapter_from_bytes(entry.payload)

    def put(self, key: str, adapter: LoRAAdapter, text: str = "") -> CacheEntry:
        """Store ``adapter`` and its chunk's ``text`` under ``key`` (replacing any entry); may evict old entries.

        Returns the stored entry, ready to be written into a collection.

        Raises:
            ValueError: the adapter is batched.
            diskcache.Timeout: the cache stayed locked by another process for ``SQLITE_TIMEOUT_S``.
        """
        return self.put_payload(key, chunk_file_bytes(adapter, text))

    def put_payload(self, key: str, payload: bytes) -> CacheEntry:
        """Store a chunk file's bytes (as :func:`lora_memory.storage.chunk_file_bytes` makes them, here or in another
        process or machine) under ``key``, replacing any entry; may evict old entries.

        Returns the stored entry, ready to be written into a collection.

        Raises:
            CorruptEntryError: ``payload`` does not start with a chunk file's header (nothing is stored).
            diskcache.Timeout: the cache stayed locked by another process for ``SQLITE_TIMEOUT_S``.
        """
        check_chunk_file_header(payload)
        digest = hashlib.sha256(payload)
        self._cache.set(key, digest.digest() + payload, retry=True)
        return CacheEntry(payload, digest.hexdigest())

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    def volume(self) -> int:
        """Bytes used on disk (index and values)."""
        return self._cache.volume()

    def clear(self) -> int:
        """Remove every entry; returns how many were removed."""
        return self._cache.clear(retry=True)

    def prune(self, keep: Set[str]) -> int:
        """Remove every entry whose key is not in ``keep`` (the chunk keys collections still use); returns how many.

        A key stored by someone else as a pickle is never read and is left to :meth:`clear`.
        """
        removed = 0
        for key in list(self._cache.iterkeys()):
            if isinstance(key, str) and key not in keep and self._cache.delete(key, retry=True):
                removed += 1
        return removed

    def close(self) -> None:
        """Close the SQLite connection (the cache reopens itself on next use)."""
        self._cache.close()


def _verify(blob: object) -> CacheEntry:
    """Check the digest and the chunk-file header; raise :class:`CorruptEntryError` on any mismatch."""
    if not isinstance(blob, bytes) or len(blob) <= DIGEST_BYTES:
        raise CorruptEntryError("entry is not a digest followed by a payload")
    digest, payload = blob[:DIGEST_BYTES], blob[DIGEST_BYTES:]
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptEntryError("checksum mismatch")
    check_chunk_file_header(payload)
    return CacheEntry(payload, digest.hex())

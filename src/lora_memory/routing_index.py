"""The collection's persistent routing index: BM25 postings of every chunk, in SQLite.

``<collection>/routing.sqlite`` holds, per distinct chunk (its content-addressed key),
its length in words and its ``(word, term frequency)`` postings. It is derived data:
every row can be rebuilt from the chunk files' headers, so a missing or corrupt index
costs a rebuild (with a warning), never a document.

It stays consistent with ``manifest.json`` (the collection's commit point) without
sharing its transaction, because rows are keyed by content: a writer inserts the
rows of its new chunks *before* it replaces the manifest, and deletes the rows no
manifest refers to *after* (and at every later sweep). So the index always holds
every chunk of the manifest, and readers rank only the keys of the manifest they
read: a row left by a killed writer is invisible and swept by the next one. Chunks
the index lacks (a collection made before the index existed, a deleted index file)
are added on first use, from their files.

Readers and writers in several processes share the file (SQLite's rollback journal,
so the file is whole after every commit and no side file outlives it; a busy timeout). Opening a collection reads no chunk file; a query reads the postings of
its words only (:class:`StoredRanker`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from .errors import CorruptEntryError
from .routing import Ranker, tokenize

logger = logging.getLogger(__name__)

INDEX_NAME = "routing.sqlite"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, length INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS postings (word TEXT NOT NULL, chunk INTEGER NOT NULL, tf INTEGER NOT NULL,
                                     PRIMARY KEY (word, chunk)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS postings_by_chunk ON postings (chunk);
"""


class RoutingIndex:
    """One collection's ``routing.sqlite``. Thread-safe; a forked child opens its own connection."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    # ---------------------------------------------------------------- connection
    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        try:
            conn.executescript(_SCHEMA)
            version = conn.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if version is None:
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif version[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version[0]}, expected {SCHEMA_VERSION}")
        except sqlite3.DatabaseError:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _run(self, work: Callable[[sqlite3.Connection], object]) -> object:
        """``work(connection)``; a corrupt or foreign file is deleted and recreated once (it is derived data).

        Raises:
            sqlite3.OperationalError: the file cannot be opened or written, or stayed locked too long.
        """
        with self._lock:
            try:
                return work(self._connect())
            except sqlite3.OperationalError:  # locked too long, cannot open or write: not the file's fault
                raise
            except sqlite3.DatabaseError as exc:  # not a database, malformed, another schema
                logger.warning("routing index %s is unusable (%s): rebuilding it from the chunk files",
                               self.path, exc)
                self.close()
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                return work(self._connect())

    def close(self) -> None:
        """Close this process's connection (reopened on next use)."""
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # ---------------------------------------------------------------- writing
    def ensure(self, keys: Iterable[str], text_of: Callable[[str], str],
               unreadable: dict[str, str] | None = None) -> None:
        """Add the chunks of ``keys`` the index lacks, reading each one's text with ``text_of(key)``.

        Without ``unreadable``, whatever ``text_of`` raises is raised (nothing is added then). With it, a chunk
        whose ``text_of`` raises ``OSError`` or ``CorruptEntryError`` is recorded there (key -> reason) and left
        out, and the others are added.
        """
        wanted = list(dict.fromkeys(keys))

        def work(conn: sqlite3.Connection) -> None:
            rows = []
            for key in _missing(conn, wanted):
                try:
                    rows.append((key, Counter(tokenize(text_of(key)))))
                except (OSError, CorruptEntryError) as exc:
                    if unreadable is None:
                        raise
                    unreadable[key] = str(exc)
            if not rows:
                return
            with _transaction(conn):
                for key, counts in rows:
                    cur = conn.execute("INSERT OR IGNORE INTO chunks (key, length) VALUES (?, ?)",
                                       (key, sum(counts.values())))
                    if cur.rowcount:  # another process may have added it meanwhile
                        conn.executemany("INSERT INTO postings VALUES (?, ?, ?)",
                                         [(w, cur.lastrowid, tf) for w, tf in counts.items()])

        self._run(work)

    def retain(self, keys: Iterable[str]) -> None:
        """Delete every chunk not in ``keys`` (call after the manifest holding ``keys`` is committed)."""
        keep = set(keys)

        def work(conn: sqlite3.Connection) -> int:
            stale = [(i,) for i, key in conn.execute("SELECT id, key FROM chunks") if key not in keep]
            if stale:
                with _transaction(conn):
                    conn.executemany("DELETE FROM postings WHERE chunk = ?", stale)
                    conn.executemany("DELETE FROM chunks WHERE id = ?", stale)
            return len(stale)

        removed = self._run(work)
        if removed:
            logger.debug("routing index %s: removed %d chunks no manifest refers to", self.path, removed)

    # ---------------------------------------------------------------- reading
    def ranker(self, keys: Sequence[str]) -> StoredRanker:
        """A ranker over ``keys`` (distinct, in routing order; every one must be in the index: :meth:`ensure`)."""

        def work(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
            return {key: (i, length) for i, key, length in conn.execute("SELECT id, key, length FROM chunks")}

        rows: dict[str, tuple[int, int]] = self._run(work)  # type: ignore[assignment]
        absent = [k for k in keys if k not in rows]
        if absent:
            raise KeyError(f"routing index {self.path} lacks {len(absent)} chunks (first: {absent[0]})")
        return StoredRanker(self, [rows[k][0] for k in keys], [rows[k][1] for k in keys])

    def postings_of(self, words: set[str], positions: Mapping[int, int]) -> dict[str, dict[int, int]]:
        """For each word: position -> tf over the chunks of ``positions`` (chunk id -> position)."""

        def work(conn: sqlite3.Connection) -> dict[str, dict[int, int]]:
            found: dict[str, dict[int, int]] = {}
            for word in words:
                post = {positions[c]: tf for c, tf in
                        conn.execute("SELECT chunk, tf FROM postings WHERE word = ?", (word,)) if c in positions}
                if post:
                    found[word] = post
            return found

        return self._run(work)  # type: ignore[return-value]


class StoredRanker(Ranker):
    """BM25+ over a manifest's chunks, postings read from a :class:`RoutingIndex` per query."""

    def __init__(self, index: RoutingIndex, ids: Sequence[int], lengths: Sequence[int]):
        super().__init__(lengths)
        self._index = index
        self._positions = {chunk_id: pos for pos, chunk_id in enumerate(ids)}

    def postings(self, words: set[str]) -> dict[str, Mapping[int, int]]:
        """See :meth:`Ranker.postings`."""
        return dict(self._index.postings_of(words, self._positions))


def _missing(conn: sqlite3.Connection, keys: list[str]) -> list[str]:
    present = {key for (key,) in conn.execute("SELECT key FROM chunks")} if keys else set()
    return [k for k in keys if k not in present]


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")

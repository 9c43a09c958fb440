"""Choosing the chunks that answer a question and composing their adapters into one.

Without routing every distinct chunk of the collection is applied; with
``top_k`` the chunks whose text best matches the question (BM25, see
:mod:`lora_memory.routing`) are. The chunk adapters are concatenated along rank
by the hypernetwork (which counts its shared bias term once; of routed chunks, a
reader with a companion keeps only the best chunk's learned part and weighs each
chunk's memory by its relevance), compressed to
``max_rank`` if set, joined with a Text-to-LoRA task adapter if one is asked for,
and cast to the base model's device and dtype. The BM25 postings live in the
collection's persistent index (:mod:`lora_memory.routing_index`); a new manifest
revision only re-reads the chunk list and lengths, and the last few composed
adapters are kept in memory, so asking again costs nothing.

Routed chunks whose relevance (:meth:`lora_memory.routing.BM25Index.relevance`)
is below ``min_relevance`` are dropped: a question nothing in the collection
matches gets no adapter. A damaged chunk file (missing, truncated, failing its
checksum) takes its documents out of this revision's routing, with a warning,
instead of failing every question: the other documents still answer, and
:attr:`Composed.damaged` names the ones left out.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict

import torch

from .adapter import LoRAAdapter
from .base import LoadedModel
from .collection import ChunkRecord, Collection, DocumentRecord
from .errors import CorruptEntryError
from .hypernet import DocToLoRA
from .routing import Ranker
from .tasks import task_adapter

logger = logging.getLogger(__name__)

COMPOSE_CACHE_SIZE = 4  # composed adapters kept in memory; each may be hundreds of MB
RACE_RETRIES = 2  # re-reads of a manifest replaced by a writer while a question was being prepared


@dataclasses.dataclass(frozen=True)
class AppliedChunk:
    """A chunk chosen for a question: its document, position, manifest record and routing score."""

    doc: DocumentRecord
    index: int
    chunk: ChunkRecord
    score: float | None = None
    relevance: float | None = None


@dataclasses.dataclass(frozen=True)
class Composed:
    """What a question gets: the adapter (None: closed book), its chunks, and the documents left out as damaged
    (doc id -> reason) or, when routing found nothing relevant enough, the best relevance it saw.
    """

    adapter: LoRAAdapter | None
    applied: list[AppliedChunk]
    damaged: dict[str, str]
    best_relevance: float | None = None


@dataclasses.dataclass(frozen=True)
class _Index:
    revision: int
    chunks: list[AppliedChunk]
    bm25: Ranker | None


class _DamagedChunk(Exception):
    """A chunk file could not be used while composing (internal: the composer routes around it)."""

    def __init__(self, key: str, reason: str):
        super().__init__(reason)
        self.key = key


class Composer:
    """Builds the adapter a question gets from a collection. Thread-safe."""

    def __init__(self, collection: Collection, base: LoadedModel, hypernet: DocToLoRA, top_k: int | None,
                 max_rank: int | None, min_relevance: float | None = None):
        self.collection = collection
        self.base = base
        self.hypernet = hypernet
        self.top_k = top_k
        self.max_rank = max_rank
        self.min_relevance = min_relevance
        self._composed: OrderedDict[tuple, LoRAAdapter | None] = OrderedDict()
        self._index: _Index | None = None
        self._damaged: tuple[int, dict[str, str]] = (-1, {})  # (revision, doc id -> reason)
        self._lock = threading.RLock()

    def prepare(self, query: str | None, task: str | None) -> Composed:
        """The adapter for ``query`` (None: every chunk) and ``task``, the chunks it holds, the damaged documents.

        A chunk file that is missing or fails its checksum after the manifest was
        reread takes its documents out (see the module docstring); one that vanished
        because a writer replaced the manifest meanwhile is retried with the new one.

        Raises:
            ModelNotFoundError: ``task`` is given but no Text-to-LoRA checkpoint ships with this installation.
        """
        races = 0
        while True:
            composed = self._select(query)
            routed = query is not None and self.top_k is not None  # then chunks come best first, with relevance
            relevance = tuple(a.relevance or 0.0 for a in composed.applied) if routed else None
            try:
                adapter = self._compose([a.chunk for a in composed.applied], task, relevance)
            except _DamagedChunk as exc:
                if self.collection.refresh() and races < RACE_RETRIES:  # a writer moved on: not damage
                    races += 1
                    continue
                self._mark_damaged(exc.key, str(exc))
                continue
            return dataclasses.replace(composed, adapter=adapter)

    def clear(self) -> None:
        """Forget the composed adapters."""
        with self._lock:
            self._composed.clear()

    def _select(self, query: str | None) -> Composed:
        self.collection.refresh()
        with self._lock:
            index = self._current_index()
            damaged = dict(self._damaged[1])
        if index.bm25 is None or query is None:
            return Composed(None, index.chunks, damaged)
        assert self.top_k is not None  # an index has BM25 only when routing is on
        found, best = index.bm25.route(query, self.top_k, self.min_relevance)
        kept = [dataclasses.replace(index.chunks[i], score=score, relevance=relevance) for i, score, relevance in found]
        return Composed(None, kept, damaged, None if kept else best)

    def _current_index(self) -> _Index:
        """The routing index of the manifest's revision, without the damaged documents (call under the lock).

        A chunk file found missing because a writer replaced the manifest meanwhile is
        not damage: the index is rebuilt from the new manifest.
        """
        attempt = 0
        while True:
            revision = self.collection.manifest.revision
            if self._damaged[0] != revision:
                self._damaged = (revision, {})
            if self._index is not None and self._index.revision == revision:
                return self._index
            known = set(self._damaged[1])
            self._index = self._build_index(revision)
            found = {d: r for d, r in self._damaged[1].items() if d not in known}
            if not found or attempt == RACE_RETRIES or not self.collection.refresh():
                for doc_id, reason in found.items():
                    self._warn_damaged(doc_id, reason)
                return self._index
            attempt += 1

    def _warn_damaged(self, doc_id: str, reason: str) -> None:
        logger.warning("collection %r: document %r is damaged and left out (%s); re-ingest it or run "
                       "`lora-memory check --repair`", self.collection.name, doc_id, reason)

    def _build_index(self, revision: int) -> _Index:
        damaged = self._damaged[1]
        seen: set[str] = set()
        unique: list[AppliedChunk] = []
        for doc in self.collection.documents.values():
            if doc.doc_id in damaged:
                continue
            for i, chunk in enumerate(doc.chunks):
                if chunk.key not in seen:  # a chunk found in several places is applied once
                    seen.add(chunk.key)
                    unique.append(AppliedChunk(doc, i, chunk))
        if self.top_k is None:
            return _Index(revision, unique, None)
        ranker, bad = self.collection.ranker([a.chunk.key for a in unique])
        if bad:  # chunks whose file cannot give its text: their documents are damaged
            for doc in self.collection.documents.values():
                reason = next((bad[c.key] for c in doc.chunks if c.key in bad), None)
                if reason is not None and doc.doc_id not in damaged:
                    damaged[doc.doc_id] = reason
            return self._build_index(revision)
        return _Index(revision, unique, ranker)

    def _mark_damaged(self, key: str, reason: str) -> None:
        """Leave out every document holding chunk ``key`` until the next revision."""
        with self._lock:
            damaged = self._damaged[1]
            for doc in self.collection.documents.values():
                if doc.doc_id not in damaged and any(c.key == key for c in doc.chunks):
                    damaged[doc.doc_id] = reason
                    self._warn_damaged(doc.doc_id, reason)
            self._index = None

    def _compose(self, chunks: list[ChunkRecord], task: str | None,
                 relevance: tuple[float, ...] | None) -> LoRAAdapter | None:
        if not self.hypernet.weighs_by_relevance(len(chunks)):
            relevance = None  # it changes nothing then: one cache entry serves every question routed here
        key = (tuple(c.key for c in chunks), task, relevance)
        with self._lock:
            if key in self._composed:
                self._composed.move_to_end(key)
                return self._composed[key]
        adapter = None
        if chunks:
            device = next(self.hypernet.parameters()).device  # compose adds the hypernetwork's bias correction
            adapter = self.hypernet.compose([self._read(c, device) for c in chunks], relevance=relevance)
            adapter.metadata.update(hypernet_fingerprint=self.hypernet.fingerprint,
                                    collection=self.collection.name)
            if self.max_rank is not None and adapter.rank > self.max_rank:
                adapter = adapter.compress(self.max_rank)
        if task is not None:
            extra = task_adapter(self.base, task)
            adapter = extra if adapter is None else LoRAAdapter.concat([adapter, extra], metadata=adapter.metadata)
        if adapter is not None:
            adapter = adapter.to(device=self.base.device, dtype=self.base.dtype)
        with self._lock:
            self._composed[key] = adapter
            while len(self._composed) > COMPOSE_CACHE_SIZE:
                self._composed.popitem(last=False)
        return adapter

    def _read(self, chunk: ChunkRecord, device: torch.device) -> LoRAAdapter:
        try:
            return self.collection.read_chunk(chunk, device)
        except (OSError, CorruptEntryError) as exc:
            raise _DamagedChunk(chunk.key, str(exc)) from exc


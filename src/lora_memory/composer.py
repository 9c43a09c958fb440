"""Choosing the chunks that answer a question and composing their adapters into one.

Without routing every distinct chunk of the collection is applied; with
``top_k`` the chunks whose text best matches the question (BM25, see
:mod:`lora_memory.routing`) are. The chunk adapters are concatenated along rank
by the hypernetwork (which counts its shared bias term once), compressed to
``max_rank`` if set, joined with a Text-to-LoRA task adapter if one is asked for,
and cast to the base model's device and dtype. The routing index is rebuilt only
when the manifest's revision changes, and the last few composed adapters are
kept in memory, so asking again costs nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict

from .adapter import LoRAAdapter
from .base import BaseModel
from .collection import ChunkRecord, Collection, DocumentRecord
from .hypernet import DocToLoRA
from .routing import BM25Index

COMPOSE_CACHE_SIZE = 4  # composed adapters kept in memory; each may be hundreds of MB


@dataclasses.dataclass(frozen=True)
class AppliedChunk:
    """A chunk chosen for a question: its document, position, manifest record and routing score."""

    doc: DocumentRecord
    index: int
    chunk: ChunkRecord
    score: float | None = None


class Composer:
    """Builds the adapter a question gets from a collection. Thread-safe."""

    def __init__(self, collection: Collection, base: BaseModel, hypernet: DocToLoRA, top_k: int | None,
                 max_rank: int | None):
        self.collection = collection
        self.base = base
        self.hypernet = hypernet
        self.top_k = top_k
        self.max_rank = max_rank
        self._composed: OrderedDict[tuple, LoRAAdapter | None] = OrderedDict()
        self._index: tuple[int, list[AppliedChunk], BM25Index | None] | None = None
        self._lock = threading.RLock()

    def prepare(self, query: str | None, task: str | None) -> tuple[LoRAAdapter | None, list[AppliedChunk]]:
        """The adapter for ``query`` (None: every chunk) and ``task``, and the chunks it holds.

        Retries once when a concurrent writer removed a chunk file after the manifest was read.

        Raises:
            CorruptEntryError: a chunk file fails its checksum.
            NotImplementedError: ``task`` is given but Text-to-LoRA is not available.
        """
        try:
            return self._prepare(query, task)
        except FileNotFoundError:
            self.collection.refresh(force=True)
            return self._prepare(query, task)

    def clear(self) -> None:
        """Forget the composed adapters."""
        with self._lock:
            self._composed.clear()

    def _prepare(self, query: str | None, task: str | None) -> tuple[LoRAAdapter | None, list[AppliedChunk]]:
        applied = self._select(query)
        return self._compose([a.chunk for a in applied], task), applied

    def _select(self, query: str | None) -> list[AppliedChunk]:
        self.collection.refresh()
        with self._lock:
            revision = self.collection.manifest.revision
            if self._index is None or self._index[0] != revision:
                chunks, seen = [], set()
                for doc in self.collection.documents.values():
                    for i, chunk in enumerate(doc.chunks):
                        if chunk.key not in seen:  # a chunk found in several places is applied once
                            seen.add(chunk.key)
                            chunks.append(AppliedChunk(doc, i, chunk))
                index = None
                if self.top_k is not None:
                    index = BM25Index([self.collection.read_chunk_text(a.chunk.key) for a in chunks])
                self._index = (revision, chunks, index)
            _, chunks, index = self._index
        if index is None or query is None:
            return chunks
        return [dataclasses.replace(chunks[i], score=score) for i, score in index.top_k(query, self.top_k)]

    def _compose(self, chunks: list[ChunkRecord], task: str | None) -> LoRAAdapter | None:
        key = (tuple(c.key for c in chunks), task)
        with self._lock:
            if key in self._composed:
                self._composed.move_to_end(key)
                return self._composed[key]
        adapter = None
        if chunks:
            device = next(self.hypernet.parameters()).device  # compose adds the hypernetwork's bias correction
            adapter = self.hypernet.compose([self.collection.read_chunk(c, device) for c in chunks])
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


def task_adapter(base: BaseModel, description: str) -> LoRAAdapter:
    """The Text-to-LoRA adapter for a task description (``lora_memory.tasks``, imported on first use).

    Raises:
        NotImplementedError: ``lora_memory.tasks`` is not available.
    """
    try:
        from .tasks import task_adapter as make
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.tasks":
            raise
        raise NotImplementedError("task= needs Text-to-LoRA (lora_memory.tasks), which this version of "
                                  "lora-memory does not include") from exc
    return make(base, description)

"""The memory backend: a named collection of internalized documents you can ask questions.

``add`` turns each document into per-chunk LoRA adapters (one hypernetwork pass
per batch of chunks, cached by content) and records them in the collection.
``ask`` composes the adapters of the ``top_k`` chunks a BM25 router picks for the
question (one by default, see docs/collections.md; every chunk with ``top_k=None``),
optionally compresses the result to ``max_rank``, applies it to the frozen base
model and generates an answer from the question alone: the documents are never
in the prompt. Every answer says which chunks were applied; when none is relevant
enough (``min_relevance``) the answer is closed-book and says so. A document whose
chunk files are damaged is left out of answers and named in them; re-adding it or
:meth:`LoRAMemory.check` with ``repair=True`` rebuilds it.

Example:
    >>> mem = LoRAMemory.open("notes")  # doctest: +SKIP
    >>> mem.add(Path("handbook.pdf"))  # doctest: +SKIP
    ['handbook.pdf']
    >>> mem.ask("How many vacation days do new staff get?").text  # doctest: +SKIP
    '25 days.'
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from pydantic import BaseModel as PydanticModel
from pydantic import Field

from .adapter import LoRAAdapter
from .aio import iterate_in_thread
from .base import LoadedModel
from .cache import AdapterCache
from .check import CheckReport, check_collection, repair_document
from .collection import Collection, DocumentInfo, DocumentRecord
from .composer import Composed, Composer
from .config import MemoryConfig
from .errors import CollectionError, DuplicateDocumentError
from .generation import GENERATION_FIELDS, GenerationConfig, Messages, encode_chat, generate, stream
from .hypernet import DocToLoRA
from .ingest import IngestProgress, content_sha256, ingest_document
from .loaders import LoadedDocument, check_doc_id, load_documents, text_doc_id
from .loaders import Source as DocumentSource
from .loading import load_models
from .parallel import DEFAULT_WORKER_THREADS, WorkerSpec, encoded_in_workers
from .paths import collection_dir
from .ray_ingest import RayOptions, encoded_on_ray

logger = logging.getLogger(__name__)

DEFAULT_COLLECTION = "default"
VLLM_MAX_LORA_RANK = 512  # the largest max_lora_rank vLLM serves (its LoRA config allows 1-512)

Question = str | Messages


class Source(PydanticModel):
    """One chunk applied to answer a question."""

    doc_id: str
    chunk_index: int
    metadata: dict[str, Any] = Field(default_factory=dict)
    snippet: str = Field(description="The chunk's first characters (at most 200).")
    score: float | None = Field(None, description="The router's score; None when every chunk is applied.")
    relevance: float | None = Field(None, description="How much of the question the chunk holds "
                                                      "(lora_memory.routing.BM25Index.relevance); None when "
                                                      "every chunk is applied.")


class Answer(PydanticModel):
    """A generated answer and what produced it."""

    text: str
    sources: list[Source]
    adapter_rank: int = Field(description="Rank of the applied adapter (0: none).")
    timings: dict[str, float] = Field(description="Seconds spent in 'compose', 'generate' and in 'total'.")
    prompt_tokens: int
    completion_tokens: int
    closed_book: bool = Field(False, description="True when no document was applied: the collection is empty, "
                                                 "or no chunk reaches MemoryConfig.min_relevance (sources is "
                                                 "then empty and closed_book_reason says which).")
    closed_book_reason: str | None = Field(None, description="Why the answer is closed-book; None when it is not.")
    damaged: list[str] = Field(default_factory=list, description="Documents left out because a chunk file of "
                                                                 "theirs is damaged (repair: re-add them, or "
                                                                 "`lora-memory check --repair`).")


class LoRAMemory:
    """A collection of internalized documents, answering through the base model with their adapters applied.

    Build one with :meth:`open`. Thread-safe; several processes may use one
    collection (writers take a file lock, readers see each commit atomically).
    """

    def __init__(self, name: str, collection: Collection, config: MemoryConfig, base: LoadedModel,
                 hypernet: DocToLoRA, cache: AdapterCache, models_from_config: bool = False):
        self.name = name
        self.config = config
        self.base = base
        self.hypernet = hypernet
        self.cache = cache
        self.collection = collection
        self._models_from_config = models_from_config  # worker processes can load them (parallel ingest)
        self._composer = Composer(collection, base, hypernet, config.top_k, config.max_rank, config.min_relevance)

    @classmethod
    def open(cls, name: str = DEFAULT_COLLECTION, directory: str | Path | None = None,
             config: MemoryConfig | None = None, base: LoadedModel | None = None,
             hypernet: DocToLoRA | None = None) -> LoRAMemory:
        """Open (or create) a collection.

        Args:
            name: the collection's name; its directory is ``collections_dir() / name``
                unless ``directory`` is given.
            directory: where the collection lives.
            config: settings; None means defaults (the embedded base model).
            base: an already loaded base model (else loaded from ``config``).
            hypernet: an already loaded hypernetwork (else loaded from ``config``).

        Raises:
            InvalidNameError: ``name`` is not a valid collection name (a path, ``..``...); a
                directory is only ever given as ``directory``.
            ValueError: ``config.chunk_tokens`` exceeds the hypernetwork's ``max_chunk_tokens``.
            ModelNotFoundError: a model cannot be found.
            IncompatibleAdapterError: the collection was built with other models, or the
                hypernetwork does not fit the base model.
            CorruptManifestError: the collection's manifest is not a valid manifest.
        """
        config = config or MemoryConfig()
        if directory is None:
            directory = collection_dir(name)
        models_from_config = base is None and hypernet is None
        base, hypernet = load_models(config, base, hypernet)
        limit = hypernet.config.max_chunk_tokens
        if config.chunk_tokens is not None and config.chunk_tokens > limit:
            raise ValueError(f"chunk_tokens ({config.chunk_tokens}) exceeds the hypernetwork's "
                             f"max_chunk_tokens ({limit})")
        collection = Collection(directory, name, lock_timeout_s=config.lock_timeout_s)
        collection.check_models(base.name, base.fingerprint, hypernet.fingerprint)
        cache = AdapterCache(config.cache_dir, config.cache_size_limit_bytes)
        return cls(name, collection, config, base, hypernet, cache, models_from_config)

    # ----------------------------------------------------------- documents
    def add(self, source: DocumentSource, *, doc_id: str | None = None, metadata: Mapping[str, Any] | None = None,
            glob: str = "**/*", progress: bool = True, workers: int = 1,
            worker_threads: int = DEFAULT_WORKER_THREADS, ray: RayOptions | None = None) -> list[str]:
        """Internalize documents; returns their ids.

        Each document is stored all-or-nothing; documents added before an error stay.
        A document whose id exists is replaced (skipped if unchanged and intact; a
        damaged one is rebuilt), unless its id comes from a file name and the stored
        document came from another file: that is refused, never overwritten.

        Args:
            source: ``str`` text, a file or directory path, or an iterable of them.
            doc_id: id of the single document in ``source`` (default: file name,
                path relative to the directory, or a hash of the text).
            metadata: attached to every document added.
            glob: which files of a directory to read.
            progress: show a progress bar on stderr (when it is a terminal).
            workers: encode in this many worker processes (see :meth:`add_documents`); 1 encodes in this one.
            worker_threads: torch threads of each worker process.
            ray: encode on Ray, in ``workers`` actors (see :meth:`add_documents`).

        Raises:
            ValueError: ``workers`` > 1 or ``ray`` but the models were passed to :meth:`open` as objects, or
                ``workers`` < 1.
            IngestWorkerError: a worker process died, or a Ray actor failed (the documents before stay).
            DocumentNotFoundError, EmptyDocumentError, UnsupportedDocumentError: bad input
                (see :func:`lora_memory.loaders.load_documents`).
            DuplicateDocumentError: two documents of ``source`` share an id (nothing is added),
                or a file-named document would replace one from another file.
            InvalidNameError: ``doc_id`` is not a valid document id.
            IncompatibleAdapterError: another process stamped the collection with other models.
        """
        docs = load_documents(source, doc_id=doc_id, metadata=metadata, glob=glob)
        return self._ingest(docs, progress, replace_any_source=doc_id is not None, workers=workers,
                            worker_threads=worker_threads, ray=ray)

    def add_documents(self, docs: Iterable[tuple[str, str | None, Mapping[str, Any] | None]], *,
                      progress: bool = False, total: int | None = None, workers: int = 1,
                      worker_threads: int = DEFAULT_WORKER_THREADS, ray: RayOptions | None = None) -> list[str]:
        """Internalize ``(text, doc_id or None, metadata or None)`` triples; returns their ids.

        The bulk path: ``docs`` is consumed lazily (a generator over a corpus never sits in memory), finished
        documents are committed every ``MemoryConfig.commit_interval_s`` seconds, and unchanged documents are
        skipped without encoding, so re-running an interrupted ingest resumes it. ``progress`` shows documents
        and tokens per second (with an ETA when ``total``, the number of documents, is given).
        An id given twice is refused when its second document comes (the first stays).

        With ``workers`` > 1, that many worker processes (``worker_threads`` torch threads each) load the models
        from this memory's config and encode the documents' chunks into the shared adapter cache, a few documents
        ahead per worker; this process stores each document from the cache, in order, and commits
        (:mod:`lora_memory.parallel`). The collection ends up the same as with ``workers=1``. The workers are
        ``spawn``-ed: a script calling this with ``workers`` > 1 needs the ``if __name__ == "__main__":`` guard.

        With ``ray`` (:class:`~lora_memory.ray_ingest.RayOptions`: the cluster's address, GPUs per actor), the
        encoding runs on a Ray cluster instead, in ``workers`` Ray Data actors of ``worker_threads`` CPUs each, which
        send the chunks' adapters back to this process's cache; this process stores and commits as above
        (:mod:`lora_memory.ray_ingest`, which says what it holds in memory). Needs ``pip install "lora-memory[ray]"``.

        Raises:
            ValueError: ``workers`` > 1 or ``ray`` but the models were passed to :meth:`open` as objects (worker
                processes and actors load them from the config's paths), or ``workers`` < 1.
            IngestWorkerError: a worker process died, or a Ray actor failed (the documents before the one it held
                stay).
            LoRAMemoryError: ``ray`` is given but Ray is not installed.
            EmptyDocumentError: a text is empty.
            DuplicateDocumentError: two documents have the same id.
            InvalidNameError: an id is not a valid document id.
        """
        loaded = (LoadedDocument(check_doc_id(doc_id) if doc_id else text_doc_id(text), text, None,
                                 dict(metadata or {}))
                  for text, doc_id, metadata in docs)
        return self._ingest(loaded, progress, replace_any_source=True, bulk=True, total=total, workers=workers,
                            worker_threads=worker_threads, ray=ray)

    def update(self, doc_id: str, source: DocumentSource, metadata: Mapping[str, Any] | None = None) -> str:
        """Replace an existing document's content (and metadata, when given; else it is kept).

        Raises:
            DocumentNotFoundError: no such document.
            ValueError: ``source`` holds more than one document.
        """
        with self._writing():
            old = self.collection.record(doc_id)
            [doc] = load_documents(source, doc_id=doc_id)
            keep = dict(metadata) if metadata is not None else old.metadata
            self._store(dataclasses.replace(doc, metadata=keep))
        return doc_id

    def delete(self, doc_id: str) -> None:
        """Remove a document and its chunk files.

        Raises:
            DocumentNotFoundError: no such document.
        """
        self.collection.remove(doc_id)

    def list(self) -> list[DocumentInfo]:
        """Every document, in the order they were first added."""
        self.collection.refresh()
        return [record.info() for record in self.collection.documents.values()]

    def get(self, doc_id: str) -> DocumentInfo:
        """One document's info.

        Raises:
            DocumentNotFoundError: no such document.
        """
        self.collection.refresh()
        return self.collection.record(doc_id).info()

    def __len__(self) -> int:
        self.collection.refresh()
        return len(self.collection.documents)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """The collection's writer lock, after checking no other process stamped it with other models."""
        with self.collection.locked():
            self.collection.check_models(self.base.name, self.base.fingerprint, self.hypernet.fingerprint)
            yield

    def _ingest(self, docs: Iterable[LoadedDocument], progress: bool, replace_any_source: bool,
                bulk: bool = False, total: int | None = None, workers: int = 1,
                worker_threads: int = DEFAULT_WORKER_THREADS, ray: RayOptions | None = None) -> builtins.list[str]:
        """Store ``docs`` under one writer lock, committing the finished ones every ``commit_interval_s`` seconds,
        at the end, and before an error propagates (so every document finished before it stays).

        A ``bulk`` ingest shows its progress for the whole call (``total`` documents, if known), not per document.
        With ``workers`` > 1 (or ``ray``), worker processes (or Ray actors) put the documents' adapters into the
        cache first.
        """
        ahead = self._encoded_ahead(docs, workers, worker_threads, ray)
        ids: set[str] = set()
        order: list[str] = []
        pending: list[DocumentRecord] = []
        with self._writing(), IngestProgress(enabled=progress and bulk, total=total) as bar, ahead as encoded:
            last = time.monotonic()
            try:
                for doc in encoded:
                    if doc.doc_id in ids:
                        raise DuplicateDocumentError(f"document id {doc.doc_id!r} is given twice; the second "
                                                     "would replace the first (the first was added)")
                    record = self._record(doc, progress and not bulk, replace_any_source, pending)
                    ids.add(doc.doc_id)
                    order.append(doc.doc_id)
                    if record is not None:
                        pending.append(record)
                    bar.document(sum(c.n_tokens for c in record.chunks) if record else 0, encoded=record is not None)
                    if pending and time.monotonic() - last >= self.config.commit_interval_s:
                        self._commit(pending)
                        last = time.monotonic()
            finally:
                if pending:
                    self._commit(pending)
        return order

    def _encoded_ahead(self, docs: Iterable[LoadedDocument], workers: int, threads: int,
                       ray: RayOptions | None) -> AbstractContextManager[Iterable[LoadedDocument]]:
        """``docs`` as they are (``workers`` 1, no ``ray``), or coming out of ``workers`` processes (or Ray actors)
        that encode them into the cache.

        Raises:
            ValueError: ``workers`` < 1, or > 1 (or ``ray``) while the models were not loaded from the config.
        """
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if workers == 1 and ray is None:
            return nullcontext(docs)
        if not self._models_from_config:
            raise ValueError(
                f"{'ray' if ray is not None else f'workers={workers}'} needs models that worker processes can load: "
                "open the memory from a MemoryConfig naming them (base_model=, hypernet= paths) instead of passing "
                "base=/hypernet= objects to LoRAMemory.open, or use workers=1" + (" without ray" if ray else ""))
        spec = WorkerSpec(self.config.with_overrides(cache_dir=self.cache.directory), self._chunk_tokens,
                          self.base.fingerprint, self.hypernet.fingerprint, threads)

        def needs_encoding(doc: LoadedDocument) -> bool:  # else its chunks are stored (damaged ones: rebuilt here)
            old = self.collection.documents.get(doc.doc_id)
            return old is None or not self._same_content(old, doc)

        if ray is not None:
            return encoded_on_ray(docs, spec, workers, ray, self.cache, needs_encoding)
        return encoded_in_workers(docs, spec, workers, needs_encoding)

    @property
    def _chunk_tokens(self) -> int:
        """The longest chunk of this memory's documents, in base-model tokens."""
        return self.config.chunk_tokens or self.hypernet.config.max_chunk_tokens

    def _same_content(self, old: DocumentRecord, doc: LoadedDocument) -> bool:
        """Whether the stored ``old`` holds ``doc`` as it is (text, metadata, source, chunking)."""
        return (old.content_sha256, old.metadata, old.source, old.chunk_tokens) == (
            content_sha256(doc.text), dict(doc.metadata), doc.source, self._chunk_tokens)

    def _store(self, doc: LoadedDocument) -> None:
        """Ingest and commit one document whose id the caller chose (inside the writer lock)."""
        record = self._record(doc, progress=False, replace_any_source=True)
        if record is not None:
            self._commit([record])

    def _commit(self, records: builtins.list[DocumentRecord]) -> None:
        """Commit ``records`` (one manifest write) and empty the list."""
        self.collection.commit(*records, models={"base_model": self.base.name, "base_fingerprint": self.base.fingerprint,
                                                 "hypernet_fingerprint": self.hypernet.fingerprint})
        records.clear()

    def _record(self, doc: LoadedDocument, progress: bool, replace_any_source: bool,
                pending: Sequence[DocumentRecord] = ()) -> DocumentRecord | None:
        """Ingest one document (inside the writer lock): its uncommitted record, or None when it is unchanged.

        Chunk files of ``pending`` records (written, not committed yet) are reused, never rewritten.

        Raises:
            DuplicateDocumentError: ``doc`` would replace a document from another file and
                ``replace_any_source`` is False (its id was not chosen by the caller).
        """
        old = self.collection.documents.get(doc.doc_id)
        if old is not None:
            if not replace_any_source and None not in (old.source, doc.source) and old.source != doc.source:
                raise DuplicateDocumentError(
                    f"document {doc.doc_id!r} already holds {old.source}; {doc.source} would replace it. Remove it "
                    f"first (lora-memory rm), or give the new one its own id (--id, doc_id=)")
            unchanged = self._same_content(old, doc)
            damaged = self.collection.damaged_chunks(old) if unchanged else {}
            if unchanged and not damaged:
                logger.info("document %r is unchanged", doc.doc_id)
                return None
            if damaged:
                logger.warning("document %r: rebuilding %d damaged chunk files", doc.doc_id, len(damaged))
            else:
                logger.info("replacing document %r", doc.doc_id)
        written = {c.key: c.sha256 for record in pending for c in record.chunks}
        return ingest_document(doc, base=self.base, hypernet=self.hypernet, cache=self.cache,
                               collection=self.collection, chunk_tokens=self._chunk_tokens,
                               batch_size=self.config.ingest_batch_size, progress=progress, written=written)

    # ------------------------------------------------------------ adapters
    def adapter(self, question: Question | None = None, *, task: str | None = None) -> LoRAAdapter | None:
        """The adapter ``ask`` would apply: every chunk, or (with ``top_k`` and a question) the routed ones.

        None when the collection is empty (or nothing is relevant to ``question``) and no task is given.
        """
        return self._composer.prepare(_query(question), task).adapter

    def export_peft(self, directory: str | Path, *, max_servable_rank: int | None = VLLM_MAX_LORA_RANK) -> Path:
        """Write the composed adapter of every chunk (compressed to ``max_rank`` if set) as a PEFT directory.

        Args:
            directory: where to write it.
            max_servable_rank: refuse an adapter of a higher rank (default: what vLLM
                serves); None writes any rank (PEFT itself loads any).

        Raises:
            CollectionError: the collection is empty, a document is damaged (the export
                would silently miss it), or the rank exceeds ``max_servable_rank``.
        """
        composed = self._composer.prepare(None, None)
        if composed.damaged:
            raise CollectionError(f"collection {self.name!r} has damaged documents {sorted(composed.damaged)}; run "
                                  "`lora-memory check --repair` (or re-add them) before exporting")
        adapter = composed.adapter
        if adapter is None:
            raise CollectionError(f"collection {self.name!r} is empty: nothing to export")
        if max_servable_rank is not None and adapter.rank > max_servable_rank:
            raise CollectionError(
                f"the exported adapter would have rank {adapter.rank} ({len(composed.applied)} chunks), more than "
                f"the {max_servable_rank} vLLM serves: compress it with --max-rank {max_servable_rank} "
                f"(MemoryConfig(max_rank={max_servable_rank})) or lower")
        return adapter.export_peft(directory, base_model_name_or_path=self.base.name)

    def check(self, repair: bool = False) -> CheckReport:
        """Verify every chunk file of the collection; with ``repair``, rebuild the damaged documents.

        A damaged document is rebuilt from the shared adapter cache, else by re-adding
        its source file if it still holds the text the manifest records; one neither can
        rebuild is reported (``repaired`` None), never removed.

        Raises:
            CorruptManifestError: the manifest is not a valid manifest (nothing can be checked).
            IncompatibleAdapterError: (``repair``) the collection was built with other models.
        """
        if not repair:
            return check_collection(self.collection)
        with self._writing():
            report = check_collection(self.collection)
            for damaged in report.damaged:
                damaged.repaired = repair_document(
                    self.collection, self.cache, damaged,
                    self._store)
        return report

    def prepare(self, question: Question | None, *, task: str | None = None
                ) -> tuple[LoRAAdapter | None, builtins.list[Source]]:
        """The adapter :meth:`ask` would apply to ``question`` and the chunks it holds, without generating.

        For callers that decode themselves, e.g. the batching server (:mod:`lora_memory.scheduler`).
        Same errors as :meth:`ask`.
        """
        composed = self._composer.prepare(_query(question), task)
        return composed.adapter, _sources(composed)

    # ------------------------------------------------------------- asking
    def ask(self, question: Question, *, task: str | None = None, generation: GenerationConfig | None = None,
            **generation_overrides: Any) -> Answer:
        """Answer ``question`` with the memory applied; the documents are not in the prompt.

        Args:
            question: the user's question, or a chat history ending with it.
            task: a task description; its Text-to-LoRA adapter is added to the documents'.
            generation: decoding settings (default: ``config.generation``).
            **generation_overrides: single :class:`GenerationConfig` fields, e.g. ``max_new_tokens=32``.

        Raises:
            TypeError: an override is not a generation setting.
            ModelNotFoundError: ``task`` is given but no Text-to-LoRA checkpoint ships with this installation.
            CorruptManifestError: the collection's manifest is not a valid manifest. (A damaged
                chunk file raises nothing: its document is left out and named in ``damaged``.)
        """
        start = time.perf_counter()
        prepared = self._composer.prepare(_query(question), task)
        sources, adapter = _sources(prepared), prepared.adapter
        composed = time.perf_counter()
        out = generate(self.base.model, self.base.tokenizer, question, adapter,
                       _generation_config(generation or self.config.generation, generation_overrides))
        done = time.perf_counter()
        return Answer(text=out.text, sources=sources, adapter_rank=_rank(adapter),
                      timings={"compose": composed - start, "generate": done - composed, "total": done - start},
                      prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
                      **self._provenance(prepared))

    def ask_stream(self, question: Question, *, task: str | None = None, generation: GenerationConfig | None = None,
                   **generation_overrides: Any) -> tuple[Iterator[str], Answer]:
        """Stream an answer: the pieces, and an :class:`Answer` whose sources are known at once.

        The answer's ``text``, ``completion_tokens`` and the ``generate``/``total`` timings
        are filled in when the iterator is exhausted (``completion_tokens`` re-tokenizes the text).
        Same arguments and errors as :meth:`ask`.
        """
        start = time.perf_counter()
        prepared = self._composer.prepare(_query(question), task)
        sources, adapter = _sources(prepared), prepared.adapter
        config = _generation_config(generation or self.config.generation, generation_overrides)
        composed = time.perf_counter()
        answer = Answer(text="", sources=sources, adapter_rank=_rank(adapter),
                        timings={"compose": composed - start},
                        prompt_tokens=int(encode_chat(self.base.tokenizer, question).shape[1]),
                        completion_tokens=0, **self._provenance(prepared))

        def pieces() -> Iterator[str]:
            parts = []
            for piece in stream(self.base.model, self.base.tokenizer, question, adapter, config):
                parts.append(piece)
                yield piece
            done = time.perf_counter()
            answer.text = "".join(parts)
            answer.completion_tokens = len(self.base.tokenizer(answer.text, add_special_tokens=False).input_ids)
            answer.timings.update(generate=done - composed, total=done - start)

        return pieces(), answer

    def stream(self, question: Question, **kwargs: Any) -> Iterator[str]:
        """The answer's text piece by piece; the pieces join to :meth:`ask`'s text. Arguments as :meth:`ask`."""
        return self.ask_stream(question, **kwargs)[0]

    async def aask(self, question: Question, **kwargs: Any) -> Answer:
        """:meth:`ask` in a worker thread, for asyncio callers."""
        return await asyncio.to_thread(self.ask, question, **kwargs)

    async def astream(self, question: Question, **kwargs: Any) -> AsyncIterator[str]:
        """:meth:`stream` for asyncio callers: each piece is awaited from a worker thread."""
        pieces = await asyncio.to_thread(self.stream, question, **kwargs)
        async for piece in iterate_in_thread(pieces):
            yield piece

    def _provenance(self, prepared: Composed) -> dict[str, Any]:
        """The :class:`Answer` fields that say what answered: closed book (and why), damaged documents left out."""
        fields: dict[str, Any] = {"damaged": sorted(prepared.damaged)}
        if prepared.applied:
            return fields
        if prepared.best_relevance is not None:
            reason = (f"no chunk is relevant enough (best relevance {prepared.best_relevance:.2f} < min_relevance "
                      f"{self.config.min_relevance})")
        elif prepared.damaged:
            reason = "every document is damaged"
        else:
            reason = f"collection {self.name!r} is empty"
        logger.warning("%s: answering from the base model alone", reason)
        return {**fields, "closed_book": True, "closed_book_reason": reason}

    # ------------------------------------------------------------- housekeeping
    def close(self) -> None:
        """Release the cache's and the routing index's database connections and the composed adapters."""
        self.cache.close()
        self.collection.routing.close()
        self._composer.clear()

    def __enter__(self) -> LoRAMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LoRAMemory(name={self.name!r}, documents={len(self)}, base={self.base.name!r})"


def _rank(adapter: LoRAAdapter | None) -> int:
    return adapter.rank if adapter is not None else 0


def _query_text(question: Question) -> str:
    """The text to route on: the question, or the last user message of a chat."""
    if isinstance(question, str):
        return question
    users = [m.get("content", "") for m in question if m.get("role") == "user"]
    return users[-1] if users else " ".join(m.get("content", "") for m in question)


def _query(question: Question | None) -> str | None:
    return None if question is None else _query_text(question)


def _sources(composed: Composed) -> list[Source]:
    """The chunks ``composed`` applies, as the :class:`Source` list an answer carries."""
    return [Source(doc_id=a.doc.doc_id, chunk_index=a.index, metadata=a.doc.metadata, snippet=a.chunk.snippet,
                   score=a.score, relevance=a.relevance) for a in composed.applied]


def _generation_config(config: GenerationConfig, overrides: Mapping[str, Any]) -> GenerationConfig:
    unknown = set(overrides) - GENERATION_FIELDS
    if unknown:
        raise TypeError(f"unknown generation settings: {sorted(unknown)}; "
                        f"valid: {sorted(GENERATION_FIELDS)}")
    return GenerationConfig(**{**config.model_dump(), **overrides}) if overrides else config

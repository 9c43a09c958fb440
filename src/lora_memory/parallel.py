"""Parallel ingest: worker processes encode documents' chunks into the shared adapter cache; one writer commits.

:func:`encoded_in_workers` hands each document to one of N worker processes (``spawn``-ed: torch and tqdm
are not fork-safe). A worker loads the memory's base model and hypernetwork once, from its
:class:`~lora_memory.config.MemoryConfig`, chunks the document exactly as the memory would
(:func:`lora_memory.ingest.chunk_batches`) and puts the adapters of the chunks the cache misses into the
shared, content-addressed :class:`~lora_memory.cache.AdapterCache` (:func:`lora_memory.ingest.encode_into_cache`).
The parent gets the documents back in their input order, each once its chunks are in the cache, and stores
them through the normal single-writer ingest, which then finds only cache hits: it writes the chunk files
and commits. At most ``IN_FLIGHT_PER_WORKER * N`` documents are in flight, so a corpus is never queued whole.

Workers are started with ``spawn``, which imports the main module in each of them: a script that ingests
with workers runs its ingest under ``if __name__ == "__main__":`` (as any ``spawn`` user does).

A worker that dies stops the ingest with :class:`~lora_memory.errors.IngestWorkerError` at the first
document it had not finished; the documents before it are stored and committed, and whatever the workers
encoded stays in the cache, so re-running the ingest resumes it.
"""

from __future__ import annotations

import functools
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .base import LoadedModel
from .cache import AdapterCache
from .config import MemoryConfig
from .errors import IngestWorkerError
from .hypernet import DocToLoRA
from .ingest import chunk_batches, chunk_keys, encode_into_cache
from .loaders import LoadedDocument
from .loading import load_models

DEFAULT_WORKER_THREADS = 1  # torch threads per worker: N single-threaded processes, not N processes fighting
IN_FLIGHT_PER_WORKER = 2  # documents handed out per worker before the parent waits for the oldest one


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to encode documents as the memory would.

    ``config`` names the models (and ``cache_dir``, the parent's cache); the fingerprints are those of the
    parent's models, which a worker's must match (same models, same cache keys).
    """

    config: MemoryConfig
    chunk_tokens: int
    base_fingerprint: str
    hypernet_fingerprint: str
    threads: int = DEFAULT_WORKER_THREADS


@contextmanager
def encoded_in_workers(docs: Iterable[LoadedDocument], spec: WorkerSpec, workers: int,
                       needs_encoding: Callable[[LoadedDocument], bool]) -> Iterator[Iterator[LoadedDocument]]:
    """``docs`` in their order, each once ``workers`` worker processes put its chunks into the shared cache.

    ``docs`` is read lazily, ahead of what has been taken by at most ``IN_FLIGHT_PER_WORKER * workers``
    documents; one for which ``needs_encoding`` is False (e.g. unchanged in the collection) is passed through
    without a worker. An error while reading ``docs`` is raised after the documents read before it came out.
    Leaving the context stops the workers (the documents they are encoding are finished first).

    Raises:
        IngestWorkerError: (while iterating) a worker process died, or loaded other models than ``spec``'s.
        EmptyDocumentError: (while iterating) a document has no text.
    """
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(spec,))
    try:
        yield _in_order(pool, iter(docs), IN_FLIGHT_PER_WORKER * workers, needs_encoding)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(pool: ProcessPoolExecutor, docs: Iterator[LoadedDocument], window: int,
              needs_encoding: Callable[[LoadedDocument], bool]) -> Iterator[LoadedDocument]:
    in_flight: deque[tuple[LoadedDocument, Future[None] | None]] = deque()
    failed: Exception | None = None  # raised by ``docs``: re-raised once the documents before it are out
    while True:
        while failed is None and len(in_flight) < window:
            try:
                doc = next(docs, None)
            except Exception as exc:  # noqa: BLE001 - any error of the caller's iterable, re-raised below
                failed = exc
                break
            if doc is None:
                break
            in_flight.append((doc, _submit(pool, doc) if needs_encoding(doc) else None))
        if not in_flight:
            break
        doc, encoding = in_flight.popleft()
        if encoding is not None:
            _wait(encoding, doc)
        yield doc
    if failed is not None:
        raise failed


def _submit(pool: ProcessPoolExecutor, doc: LoadedDocument) -> Future[None]:
    """``doc`` handed to a worker; when the pool is broken already, a future that fails at the document's turn."""
    try:
        return pool.submit(_encode_document, doc.doc_id, doc.text)
    except BrokenProcessPool as exc:
        failed: Future[None] = Future()
        failed.set_exception(exc)
        return failed


def _wait(encoding: Future[None], doc: LoadedDocument) -> None:
    """Wait until ``doc``'s chunks are in the cache; a worker's own error is raised as it is."""
    try:
        encoding.result()
    except BrokenProcessPool as exc:
        raise IngestWorkerError(
            f"a worker process died before it finished encoding document {doc.doc_id!r} (killed, out of memory, "
            "or it could not start: a script that ingests with workers needs the `if __name__ == \"__main__\":` "
            "guard); the documents before it are stored. Re-run the ingest to resume it (what the workers "
            "encoded is in the adapter cache), with fewer workers if memory ran out") from exc


# ------------------------------------------------------------------ in a worker process
def load_worker_models(spec: WorkerSpec) -> tuple[LoadedModel, DocToLoRA]:
    """The models ``spec`` names, loaded in this worker (a process here, a Ray actor in :mod:`lora_memory.ray_ingest`)
    with ``spec.threads`` torch threads, checked to be the memory's own.

    Raises:
        IngestWorkerError: the models loaded have other fingerprints than the memory's.
        ModelNotFoundError: a model cannot be found where the config names it.
    """
    torch.set_num_threads(spec.threads)
    base, hypernet = load_models(spec.config)
    if (base.fingerprint, hypernet.fingerprint) != (spec.base_fingerprint, spec.hypernet_fingerprint):
        raise IngestWorkerError(
            f"a worker loaded other models from {spec.config.base_model!r} and {spec.config.hypernet!r} than the "
            "memory runs on (their files changed since it was opened?): its adapters would not be the memory's")
    return base, hypernet


_spec: WorkerSpec | None = None  # set by _start_worker in each worker process


def _start_worker(spec: WorkerSpec) -> None:
    global _spec
    _spec = spec


@functools.cache
def _models() -> tuple[WorkerSpec, LoadedModel, DocToLoRA, AdapterCache]:
    """This worker's models and cache, loaded by its first document (not in the initializer: an error there only
    breaks the pool, whereas one here reaches the parent as itself).
    """
    spec = _spec
    if spec is None:
        raise RuntimeError("_encode_document runs only in a worker started by encoded_in_workers")
    base, hypernet = load_worker_models(spec)
    return spec, base, hypernet, AdapterCache(spec.config.cache_dir, spec.config.cache_size_limit_bytes)


def _encode_document(doc_id: str, text: str) -> None:
    """Put the adapter of every chunk of the document into the shared cache (those already there are kept)."""
    spec, base, hypernet, cache = _models()
    for batch in chunk_batches(doc_id, text, base, spec.chunk_tokens, spec.config.ingest_batch_size):
        encode_into_cache(dict(zip(chunk_keys(batch, base, hypernet), batch)), base, hypernet, cache)

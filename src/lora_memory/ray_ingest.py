"""Ingest on a Ray cluster: Ray Data actors encode documents' chunks, this process writes and commits.

:func:`encoded_on_ray` is what ``LoRAMemory.add_documents(..., workers=N, ray=RayOptions(...))`` (also ``add``,
and ``lora-memory ingest --ray ADDRESS --workers N``) runs. Documents go to Ray a window at a time
(:attr:`RayOptions.window_docs`; ``ray.data.from_items`` over their ids and texts) through ``map_batches`` with
:class:`ChunkEncoder` on a pool of N actors, each reserving ``worker_threads`` CPUs (its torch threads) and
:attr:`RayOptions.num_gpus_per_actor` GPUs. An actor loads the memory's models from its
:class:`~lora_memory.config.MemoryConfig` once (:func:`lora_memory.parallel.load_worker_models`, which checks their
fingerprints), chunks each document exactly as the memory would and returns, per batch of chunks, their cache keys
and chunk files' bytes (:func:`lora_memory.ingest.encode_chunks`): nothing assumes a filesystem shared with this
process. This process (the driver) iterates the results with Ray's streaming execution, in input order
(``preserve_order``); Ray schedules the actors, applies back-pressure, restarts an actor that dies and retries its
work. The driver puts the entries into its own adapter cache (:meth:`~lora_memory.cache.AdapterCache.put_payload`)
and hands each document, once its chunks are in, to the normal single-writer ingest, which finds only cache hits,
writes the chunk files and commits. A document unchanged in the collection does not go to Ray.

What is held in memory: in this process, one window of documents (text and metadata) and the result rows Ray
has read ahead; in Ray's object store, that window's ids and texts and the result blocks not consumed yet (bounded
by Ray's back-pressure; spilled to disk when the store fills). Each window runs a fresh actor pool, so every
actor loads the models once per window: a larger window loads them less often, a smaller one holds fewer
documents. The models must be found at the config's paths on every node (the embedded model ships with the
package, which every node needs installed).

Ray is connected with ``ray.init(address=RayOptions.address)`` unless this process is connected already (then that
connection is used and kept); a connection made here is shut down at the end. An error in an actor (e.g. models
that differ from the memory's) stops the ingest with :class:`~lora_memory.errors.IngestWorkerError`; the
documents before it are stored and what came back is in the cache, so re-running the ingest resumes it.

Example:
    >>> mem = LoRAMemory.open("wiki", config=MemoryConfig(base_model="embedded"))  # doctest: +SKIP
    >>> mem.add_documents(iter_jsonl("corpus.jsonl"), workers=8,
    ...                   ray=RayOptions(address="auto", num_gpus_per_actor=1))  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .cache import AdapterCache
from .errors import EmptyDocumentError, IngestWorkerError, LoRAMemoryError
from .ingest import chunk_batches, chunk_keys, encode_chunks
from .loaders import LoadedDocument
from .parallel import WorkerSpec, load_worker_models

logger = logging.getLogger(__name__)

RAY_INSTALL = 'pip install "lora-memory[ray]"'
DEFAULT_WINDOW_DOCS = 4096  # documents handed to Ray per dataset (one actor pool, models loaded once per actor)
DOCS_PER_BLOCK = 8  # documents per block of the input dataset (Ray's unit of work), with at least a block per actor


@dataclass(frozen=True)
class RayOptions:
    """Where and how :meth:`~lora_memory.memory.LoRAMemory.add_documents` encodes on Ray (``workers`` actors).

    Args:
        address: passed to ``ray.init(address=...)``: ``"auto"`` (a running cluster), ``"ray://host:10001"``,
            ``"local"`` (a new Ray on this machine, with its CPUs); None: Ray's default (``RAY_ADDRESS``, else a
            running local Ray, else a new one). Ignored when this process is connected to Ray already.
        num_gpus_per_actor: GPUs each actor reserves (0: CPU actors). With the memory's default device
            ``"auto"``, an actor with a GPU encodes on it.
        window_docs: documents handed to Ray at a time (see the module docstring for the memory it bounds).

    Raises:
        ValueError: ``num_gpus_per_actor`` < 0 or ``window_docs`` < 1.
    """

    address: str | None = None
    num_gpus_per_actor: float = 0.0
    window_docs: int = DEFAULT_WINDOW_DOCS

    def __post_init__(self) -> None:
        if self.num_gpus_per_actor < 0:
            raise ValueError(f"num_gpus_per_actor must be at least 0, got {self.num_gpus_per_actor}")
        if self.window_docs < 1:
            raise ValueError(f"window_docs must be at least 1, got {self.window_docs}")


@contextmanager
def encoded_on_ray(docs: Iterable[LoadedDocument], spec: WorkerSpec, actors: int, options: RayOptions,
                   cache: AdapterCache, needs_encoding: Callable[[LoadedDocument], bool]
                   ) -> Iterator[Iterator[LoadedDocument]]:
    """``docs`` in their order, each once ``actors`` Ray actors encoded its chunks and ``cache`` holds them.

    ``docs`` is read a window at a time; one for which ``needs_encoding`` is False (e.g. unchanged in the
    collection) is passed through without Ray. An error while reading ``docs`` is raised after the documents read
    before it came out. Leaving the context stops the running Ray dataset (and a Ray connection made here).

    Raises:
        LoRAMemoryError: Ray is not installed.
        IngestWorkerError: (while iterating) an actor failed: e.g. it loaded other models than ``spec``'s.
    """
    ray = _import_ray()
    connected_here = not ray.is_initialized()
    if connected_here:
        ray.init(address=options.address)
    elif options.address is not None:
        logger.info("this process is connected to Ray already: using that connection, not %r", options.address)
    encoded = _in_order(ray, iter(docs), spec, actors, options, cache, needs_encoding)
    try:
        yield encoded
    finally:
        encoded.close()
        if connected_here:
            ray.shutdown()


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ModuleNotFoundError as exc:
        raise LoRAMemoryError(f"ingesting on Ray needs Ray Data: {RAY_INSTALL}") from exc
    return ray


def _in_order(ray: Any, docs: Iterator[LoadedDocument], spec: WorkerSpec, actors: int, options: RayOptions,
              cache: AdapterCache, needs_encoding: Callable[[LoadedDocument], bool]
              ) -> Generator[LoadedDocument, None, None]:
    failed: Exception | None = None  # raised by ``docs``: re-raised once the documents before it are out
    while failed is None:
        window: list[LoadedDocument] = []
        try:
            for doc in itertools.islice(docs, options.window_docs):
                window.append(doc)
        except Exception as exc:  # noqa: BLE001 - any error of the caller's iterable, re-raised below
            failed = exc
        if not window:
            break
        yield from _encoded_window(ray, window, spec, actors, options, cache, needs_encoding)
    if failed is not None:
        raise failed


def _encoded_window(ray: Any, window: Sequence[LoadedDocument], spec: WorkerSpec, actors: int,
                    options: RayOptions, cache: AdapterCache,
                    needs_encoding: Callable[[LoadedDocument], bool]) -> Iterator[LoadedDocument]:
    """The documents of ``window`` in order, each once its chunk files from Ray are in ``cache``."""
    todo = {i for i, doc in enumerate(window) if needs_encoding(doc)}
    if not todo:
        yield from window
        return
    context = ray.data.DataContext.get_current()  # what a dataset captures when it is created, and iteration reads
    preserved = context.execution_options.preserve_order  # restored once the window is out
    context.execution_options.preserve_order = True
    rows: Iterator[dict[str, Any]] = iter(())
    done: set[int] = set()
    try:
        rows = iter(_encode(ray, [(i, window[i]) for i in sorted(todo)], spec, actors, options).iter_rows())
        for i, doc in enumerate(window):
            while i in todo and i not in done:  # rows come in input order (any order would do: keys are content)
                try:
                    row = next(rows)
                except ray.exceptions.RayError as exc:
                    raise IngestWorkerError(
                        f"encoding on Ray failed before document {doc.doc_id!r} was in: {_reason(exc)}; the documents "
                        "before it are stored. Re-run the ingest to resume it") from exc
                for key, payload in zip(row["keys"], row["payloads"]):
                    cache.put_payload(key, payload)
                if row["done"]:
                    done.add(row["index"])
            yield doc
    finally:
        close = getattr(rows, "close", None)
        if close is not None:  # stops the dataset's execution when the ingest stops early
            close()
        context.execution_options.preserve_order = preserved


def _reason(exc: Exception) -> str:
    """What went wrong in Ray, in one line: the actor's own exception (Ray's message around it holds a traceback,
    whose last line is that exception; the whole of it stays chained to the error raised).
    """
    cause = getattr(exc, "cause", None)  # a RayTaskError carries the task's exception
    lines = str(cause if isinstance(cause, Exception) else exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def _encode(ray: Any, docs: Sequence[tuple[int, LoadedDocument]], spec: WorkerSpec, actors: int,
            options: RayOptions) -> Any:
    """The Ray dataset of ``docs``' (index, document) encoded chunk files: rows of :meth:`ChunkEncoder.__call__`."""
    blocks = min(len(docs), max(actors, math.ceil(len(docs) / DOCS_PER_BLOCK)))  # a block goes to one actor
    dataset = ray.data.from_items([{"index": i, "doc_id": doc.doc_id, "text": doc.text} for i, doc in docs],
                                  override_num_blocks=blocks)
    return dataset.map_batches(ChunkEncoder, fn_constructor_kwargs={"spec": spec}, batch_size=1,
                               compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=spec.threads,
                               num_gpus=options.num_gpus_per_actor)


class ChunkEncoder:
    """A Ray Data actor's encoder: the memory's models, loaded once; called with documents, returns chunk files.

    Args:
        spec: the models (the memory's config and fingerprints) and how the memory chunks.

    Raises:
        IngestWorkerError: the models loaded differ from the memory's.
        ModelNotFoundError: a model is not where the config names it (on this node).
    """

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.base, self.hypernet = load_worker_models(spec)

    def __call__(self, batch: dict[str, Any]) -> Iterator[Any]:
        """For each document of ``batch`` (columns index, doc_id, text), one pyarrow table per ingest batch of its
        chunks (columns index, keys, payloads: chunk files' bytes, done: False) and a last one with ``done`` True.

        A document without text yields only its last table: the writer's ingest raises its error at its turn.
        """
        for index, doc_id, text in zip(batch["index"], batch["doc_id"], batch["text"]):
            try:
                batches = chunk_batches(str(doc_id), str(text), self.base, self.spec.chunk_tokens,
                                        self.spec.config.ingest_batch_size)
            except EmptyDocumentError:
                batches = iter(())
            for chunks in batches:
                yield _table(int(index), encode_chunks(dict(zip(chunk_keys(chunks, self.base, self.hypernet), chunks)),
                                                       self.base, self.hypernet), done=False)
            yield _table(int(index), {}, done=True)


def _table(index: int, payloads: dict[str, bytes], done: bool) -> Any:
    """One result row as a pyarrow table, its column types given (an empty list has none to infer)."""
    import pyarrow as pa

    return pa.table({"index": pa.array([index], pa.int64()),
                     "keys": pa.array([list(payloads)], pa.list_(pa.string())),
                     "payloads": pa.array([list(payloads.values())], pa.list_(pa.large_binary())),
                     "done": pa.array([done], pa.bool_())})

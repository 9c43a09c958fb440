"""Continuous batching: one thread decodes every waiting request together, each with its own adapter.

Callers :meth:`Scheduler.submit` a :class:`DecodeRequest` (prompt token ids, an
adapter or None, decoding settings) from any thread and get a
:class:`RequestHandle` that yields the answer's text pieces as they are decoded,
synchronously or with ``async for``. The scheduler thread loops: it admits waiting
requests into the :class:`lora_memory.decoding.DecodeBatch` (up to
``max_batch_size`` rows, joiners prefilled together), runs one decode step for all
rows, hands each row its token, and drops the rows that finished (end of sequence,
a stop string, ``max_new_tokens``) or whose caller cancelled. Rows join and leave
between any two steps, so a new request waits for one step, not for the batch.

``max_batch_size=1`` serves requests one at a time in arrival order: the serialized
path the benchmark compares against. :meth:`Scheduler.close` stops taking requests
and, by default, finishes the ones in flight (graceful shutdown).

Example:
    >>> with Scheduler(base.model, base.tokenizer) as scheduler:  # doctest: +SKIP
    ...     handle = scheduler.submit(DecodeRequest(ids, adapter, GenerationConfig(max_new_tokens=32)))
    ...     print("".join(handle), handle.result.finish_reason)
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .adapter import LoRAAdapter
from .apply import check_compatible
from .decoding import DecodeBatch, TextTracker, eos_token_ids, sample_next
from .errors import SchedulerClosedError
from .generation import GenerationConfig

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 16  # rows decoded together; measured in docs/benchmarks.md (section 6)
FinishReason = Literal["stop", "length", "cancelled"]


@dataclass
class DecodeRequest:
    """What to decode: prompt token ids, the adapter for this row (None: the bare model), the settings."""

    prompt_ids: Sequence[int]
    adapter: LoRAAdapter | None = None
    config: GenerationConfig = field(default_factory=GenerationConfig)


@dataclass
class Finished:
    """How a request ended: its whole text, why it ended, and its token counts."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


_DONE = object()


class RequestHandle:
    """A submitted request: iterate it (or ``async for``) for text pieces; ``result`` is set at the end.

    The pieces join to ``result.text``. Breaking out of the iteration does not stop
    the row: call :meth:`cancel` (the server does when a client disconnects).
    """

    def __init__(self, request: DecodeRequest, loop: asyncio.AbstractEventLoop | None = None):
        self.request = request
        self.result: Finished | None = None  # set by the scheduler thread when the request ends
        self.cancelled = threading.Event()
        self._loop = loop
        # a thread-safe queue.Queue, or an asyncio.Queue fed through the loop: the two share get/put
        self._queue: Any = asyncio.Queue() if loop is not None else queue.Queue()

    @property
    def finished(self) -> Finished:
        """The result, once iterating the handle has ended.

        Raises:
            RuntimeError: the request has not finished yet.
        """
        if self.result is None:
            raise RuntimeError("the request has not finished: iterate the handle to its end first")
        return self.result

    def cancel(self) -> None:
        """Ask the scheduler to drop this row at the next step (its result says ``cancelled``)."""
        self.cancelled.set()

    def __iter__(self) -> Iterator[str]:
        if self._loop is not None:
            raise TypeError("this handle was submitted with an event loop: iterate it with `async for`")
        while (item := self._queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def __aiter__(self) -> AsyncIterator[str]:
        if self._loop is None:
            raise TypeError("this handle was submitted without an event loop: iterate it with `for`")
        while (item := await self._queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    # called from the scheduler thread
    def _put(self, item: object) -> None:
        if self._loop is None:
            self._queue.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the caller's event loop is closed: nobody is listening any more
            self.cancel()

    def _finish(self, result: Finished) -> None:
        self.result = result
        self._put(_DONE)

    def _fail(self, exc: BaseException) -> None:
        self._put(exc)


@dataclass
class _Row:
    handle: RequestHandle
    tracker: TextTracker
    generator: torch.Generator | None
    next_token: int = -1


class Scheduler:
    """Decodes submitted requests in one thread, batching them (continuous batching). Thread-safe.

    Args:
        model: the base model (its adapter lock is taken for every step, so other
            users of the model interleave between steps).
        tokenizer: its tokenizer.
        max_batch_size: most rows decoded together; 1 serializes requests.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        self._eos = eos_token_ids(model, tokenizer)
        self._waiting: deque[RequestHandle] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._drain = True
        self.steps = 0  # decode steps run
        self.row_steps = 0  # rows decoded, summed over steps: row_steps / steps is the mean batch size
        self._thread = threading.Thread(target=self._run, name="lora-memory-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ callers
    def submit(self, request: DecodeRequest, loop: asyncio.AbstractEventLoop | None = None) -> RequestHandle:
        """Queue a request; returns its handle (pass the running ``loop`` to consume it with ``async for``).

        Raises:
            ValueError: the prompt is empty, or prompt plus ``max_new_tokens`` exceeds the model's window.
            IncompatibleAdapterError: the adapter does not fit the model.
            SchedulerClosedError: the scheduler is shutting down.
        """
        n = len(request.prompt_ids)
        if n == 0:
            raise ValueError("the prompt has no tokens")
        if self.max_positions is not None and n + request.config.max_new_tokens > self.max_positions:
            raise ValueError(f"the prompt ({n} tokens) plus max_tokens ({request.config.max_new_tokens}) exceeds the "
                             f"model's context window of {self.max_positions} tokens")
        if request.adapter is not None:
            check_compatible(self.model, request.adapter)
        handle = RequestHandle(request, loop)
        with self._cond:
            if self._closing:
                raise SchedulerClosedError("the server is shutting down and takes no new requests")
            self._waiting.append(handle)
            self._cond.notify()
        return handle

    def generate(self, request: DecodeRequest) -> Finished:
        """Submit ``request`` and wait for its result (blocking)."""
        handle = self.submit(request)
        for _ in handle:
            pass
        assert handle.result is not None
        return handle.result

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Take no more requests; finish those in flight (``drain``) or cancel them, then stop the thread."""
        with self._cond:
            self._closing, self._drain = True, drain
            self._cond.notify()
        self._thread.join(timeout)

    def __enter__(self) -> Scheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Requests waiting to join the batch."""
        with self._cond:
            return len(self._waiting)

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        batch = DecodeBatch(self.model, self.tokenizer.pad_token_id)
        rows: list[_Row] = []
        while True:
            with self._cond:
                while not rows and not self._waiting and not self._closing:
                    self._cond.wait()
                if self._closing and not self._drain:
                    for handle in self._waiting:
                        handle.cancel()
                    for row in rows:
                        row.handle.cancel()
                if self._closing and not rows and all(h.cancelled.is_set() for h in self._waiting):
                    for handle in self._waiting:
                        handle._finish(Finished("", "cancelled", len(handle.request.prompt_ids), 0))
                    self._waiting.clear()
                    return
                joiners: list[RequestHandle] = []
                while self._waiting and len(rows) + len(joiners) < self.max_batch_size:
                    handle = self._waiting.popleft()
                    if handle.cancelled.is_set():
                        handle._finish(Finished("", "cancelled", len(handle.request.prompt_ids), 0))
                    else:
                        joiners.append(handle)
            try:
                if joiners:
                    rows += self._admit(batch, joiners)
                    joiners = []
                elif rows:
                    self._decode(batch, rows)
                rows = self._retire(batch, rows)
            except Exception as exc:  # a failed step fails its rows, never the scheduler
                logger.exception("decode step failed; failing its %d request(s)", len(rows) + len(joiners))
                for handle in [r.handle for r in rows] + joiners:
                    handle._fail(exc)
                batch, rows = DecodeBatch(self.model, self.tokenizer.pad_token_id), []

    def _admit(self, batch: DecodeBatch, joiners: list[RequestHandle]) -> list[_Row]:
        logits = batch.add([h.request.prompt_ids for h in joiners], [h.request.adapter for h in joiners])
        new = []
        for handle in joiners:
            seed = handle.request.config.seed
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            new.append(_Row(handle, TextTracker(self.tokenizer, handle.request.config.stop), generator))
        self._take(new, logits)
        return new

    def _decode(self, batch: DecodeBatch, rows: list[_Row]) -> None:
        logits = batch.step(torch.tensor([r.next_token for r in rows], dtype=torch.long))
        self.steps += 1
        self.row_steps += len(rows)
        self._take(rows, logits)

    def _take(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Sample each row's next token and hand the row's new text to its caller."""
        tokens = sample_next(logits.cpu(), [r.handle.request.config for r in rows], [r.generator for r in rows])
        for row, token in zip(rows, tokens.tolist()):
            row.next_token = token
            piece, stopped = row.tracker.push(token)
            if piece:
                row.handle._put(piece)
            reason: FinishReason | None = None
            if stopped or token in self._eos:
                reason = "stop"
            elif len(row.tracker.tokens) >= row.handle.request.config.max_new_tokens:
                reason = "length"
            if reason is not None:
                self._end(row, reason)

    def _end(self, row: _Row, reason: FinishReason) -> None:
        rest = row.tracker.finish()
        if rest:
            row.handle._put(rest)
        row.handle._finish(Finished(row.tracker.text, reason, len(row.handle.request.prompt_ids),
                                    len(row.tracker.tokens)))

    def _retire(self, batch: DecodeBatch, rows: list[_Row]) -> list[_Row]:
        """Drop finished and cancelled rows from the batch."""
        keep = []
        for i, row in enumerate(rows):
            if row.handle.result is not None:
                continue
            if row.handle.cancelled.is_set():
                row.handle._finish(Finished(row.tracker.text, "cancelled", len(row.handle.request.prompt_ids),
                                            len(row.tracker.tokens)))
                continue
            keep.append(i)
        batch.keep(keep)
        return [rows[i] for i in keep]

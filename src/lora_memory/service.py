"""What ``lora-memory serve`` does, without HTTP: collections as models, answers through the scheduler.

Every collection under the collections directory is a model (its name is the
model id), plus the bare base model (its name, e.g. ``SmolLM2-135M-Instruct``) for
closed-book answers. A question is routed and composed by the collection's
:class:`lora_memory.LoRAMemory` (:meth:`~lora_memory.LoRAMemory.prepare`), then
decoded by the shared :class:`lora_memory.scheduler.Scheduler`, where it shares
decode steps with every other request in flight, whatever its collection.

Documents are managed with the memory's own calls, so errors and atomicity are
the CLI's: each document is stored all-or-nothing under the collection's writer lock.

The HTTP layer (:mod:`lora_memory.server`) only translates requests and errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from .adapter import LoRAAdapter
from .apply import model_lock
from .base import LoadedModel
from .collection import DocumentInfo, list_collections
from .config import MemoryConfig
from .errors import IncompatibleAdapterError, UnknownCollectionError, UnsupportedDocumentError
from .generation import encode_chat
from .hypernet import DocToLoRA
from .loaders import load_file
from .memory import LoRAMemory, Source
from .openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_chunk,
    chat_completion,
    error_body,
    new_id,
    text_completion,
    usage,
)
from .paths import collections_dir
from .scheduler import DecodeRequest, Finished, RequestHandle, Scheduler

logger = logging.getLogger(__name__)

UPLOAD_SUFFIXES = {".txt", ".md", ".markdown", ".pdf", ".html", ".htm"}


def sse(payload: Mapping[str, Any] | str) -> str:
    """One server-sent event carrying ``payload`` as JSON (or ``[DONE]``)."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class MemoryService:
    """Collections served as OpenAI models, sharing one base model, hypernetwork and scheduler. Thread-safe.

    Args:
        config: the settings every collection is opened with (routing, decoding defaults).
        base: the loaded base model.
        hypernet: the loaded hypernetwork.
        scheduler: decodes the answers (batched across collections).

    The collections served are those under :func:`lora_memory.paths.collections_dir`
    (``--home`` / ``$LORA_MEMORY_HOME``), found anew on every call.
    """

    def __init__(self, config: MemoryConfig, base: LoadedModel, hypernet: DocToLoRA, scheduler: Scheduler):
        self.config = config
        self.base = base
        self.hypernet = hypernet
        self.scheduler = scheduler
        self._memories: dict[str, LoRAMemory] = {}
        self._lock = threading.Lock()

    @property
    def base_model_id(self) -> str:
        """The model id of closed-book answers (no collection)."""
        return self.base.name

    # ------------------------------------------------------------ models
    def models(self) -> list[dict[str, Any]]:
        """``/v1/models`` entries: each collection that fits the loaded models, then the base model."""
        entries = []
        for name in list_collections(collections_dir()):
            try:
                self.memory(name)
            except IncompatibleAdapterError as exc:
                logger.warning("not serving collection %r: %s", name, exc)
                continue
            entries.append({"id": name, "object": "model", "created": 0, "owned_by": "lora-memory"})
        entries.append({"id": self.base_model_id, "object": "model", "created": 0, "owned_by": "lora-memory"})
        return entries

    def memory(self, name: str, create: bool = False) -> LoRAMemory:
        """The open memory of collection ``name`` (a new one only with ``create``).

        Raises:
            UnknownCollectionError: no such collection (and not ``create``).
            ValueError: ``name`` is not a valid collection name.
            IncompatibleAdapterError: the collection was built with other models.
        """
        with self._lock:
            memory = self._memories.get(name)
            if memory is not None:
                return memory
            if not create and name not in list_collections(collections_dir()):
                raise UnknownCollectionError(f"no collection or model named {name!r}")
            memory = LoRAMemory.open(name, config=self.config, base=self.base, hypernet=self.hypernet)
            self._memories[name] = memory
            return memory

    def close(self) -> None:
        """Stop the scheduler and release every open memory."""
        with self._lock:
            for memory in self._memories.values():
                memory.close()
            self._memories.clear()

    # ------------------------------------------------------------ answers
    async def chat(self, request: ChatCompletionRequest) -> dict[str, Any] | AsyncIterator[str]:
        """A ``chat.completion`` object, or (``stream``) the server-sent events of its chunks.

        Raises:
            UnknownCollectionError, UnsupportedRequestError, ValueError: a bad request.
        """
        messages = request.as_messages()
        ids = encode_chat(self.base.tokenizer, messages)[0].tolist()
        handle, extra = await self._submit(request, messages, ids)
        response_id = new_id("chatcmpl")
        if request.stream:
            return self._chat_events(handle, response_id, request, extra)
        text, result = await _collect(handle)
        return chat_completion(response_id, request.model, text, result.finish_reason, result.prompt_tokens,
                               result.completion_tokens, extra)

    async def complete(self, request: CompletionRequest) -> dict[str, Any] | AsyncIterator[str]:
        """A ``text_completion`` object for a plain-text prompt, or (``stream``) its server-sent events.

        Raises:
            UnknownCollectionError, UnsupportedRequestError, ValueError: a bad request.
        """
        prompt = request.prompt_text()
        ids = self.base.tokenizer(prompt).input_ids
        handle, extra = await self._submit(request, prompt, ids)
        response_id = new_id("cmpl")
        if request.stream:
            return self._text_events(handle, response_id, request, extra)
        text, result = await _collect(handle)
        return text_completion(response_id, request.model, text, result.finish_reason, extra,
                               (result.prompt_tokens, result.completion_tokens))

    async def _submit(self, request: ChatCompletionRequest | CompletionRequest, question: Any,
                      ids: list[int]) -> tuple[RequestHandle, dict[str, Any]]:
        request.check_supported()
        config = request.generation(self.config.generation)
        adapter: LoRAAdapter | None = None
        sources: list[Source] = []
        if request.model != self.base_model_id or request.model in list_collections(collections_dir()):
            memory = await asyncio.to_thread(self.memory, request.model)
            adapter, sources = await asyncio.to_thread(memory.prepare, question)
        handle = self.scheduler.submit(DecodeRequest(ids, adapter, config), asyncio.get_running_loop())
        extra = {"sources": [s.model_dump(mode="json") for s in sources],
                 "adapter_rank": 0 if adapter is None else adapter.rank, "closed_book": not sources}
        return handle, extra

    async def _chat_events(self, handle: RequestHandle, response_id: str, request: ChatCompletionRequest,
                           extra: dict[str, Any]) -> AsyncIterator[str]:
        model = request.model
        try:
            yield sse(chat_chunk(response_id, model, {"role": "assistant", "content": ""}, extra=extra))
            async for piece in handle:
                yield sse(chat_chunk(response_id, model, {"content": piece}))
            result = handle.finished
            yield sse(chat_chunk(response_id, model, {}, result.finish_reason))
            if request.include_usage:
                yield sse({**chat_chunk(response_id, model, {}), "choices": [],
                           "usage": usage(result.prompt_tokens, result.completion_tokens)})
            yield sse("[DONE]")
        except Exception as exc:  # headers are sent: report in the stream, as OpenAI does
            logger.exception("streamed answer failed")
            yield sse(error_body(f"generation failed: {type(exc).__name__}", "server_error"))
        finally:
            handle.cancel()  # the client went away: stop decoding its row (no-op once finished)

    async def _text_events(self, handle: RequestHandle, response_id: str, request: CompletionRequest,
                           extra: dict[str, Any]) -> AsyncIterator[str]:
        model = request.model
        try:
            first = True
            async for piece in handle:
                yield sse(text_completion(response_id, model, piece, None, extra if first else None))
                first = False
            result = handle.finished
            yield sse(text_completion(response_id, model, "", result.finish_reason, extra if first else None))
            if request.include_usage:
                yield sse({**text_completion(response_id, model, "", None), "choices": [],
                           "usage": usage(result.prompt_tokens, result.completion_tokens)})
            yield sse("[DONE]")
        except Exception as exc:
            logger.exception("streamed completion failed")
            yield sse(error_body(f"generation failed: {type(exc).__name__}", "server_error"))
        finally:
            handle.cancel()

    # ------------------------------------------------------------ documents
    def collections(self) -> list[dict[str, Any]]:
        """Each collection's name and document count."""
        return [{"id": name, "object": "collection", "documents": len(self.memory(name))}
                for name in list_collections(collections_dir())]

    def documents(self, collection: str) -> list[DocumentInfo]:
        """Raises: UnknownCollectionError."""
        return self.memory(collection).list()

    def document(self, collection: str, doc_id: str) -> DocumentInfo:
        """Raises: UnknownCollectionError, DocumentNotFoundError."""
        return self.memory(collection).get(doc_id)

    def add_text(self, collection: str, text: str, doc_id: str | None = None,
                 metadata: Mapping[str, Any] | None = None) -> list[DocumentInfo]:
        """Internalize a text document (creating the collection if needed); returns its info.

        Raises:
            ValueError: a bad collection name. EmptyDocumentError: no text.
        """
        memory = self.memory(collection, create=True)
        with model_lock(self.base.model):  # the hypernetwork's encoder hooks the base model without this lock
            ids = memory.add(text, doc_id=doc_id, metadata=metadata, progress=False)
        return [memory.get(i) for i in ids]

    def add_file(self, collection: str, filename: str, data: bytes, doc_id: str | None = None,
                 metadata: Mapping[str, Any] | None = None) -> list[DocumentInfo]:
        """Internalize an uploaded file (txt, md, pdf, html; its id defaults to the file name).

        Raises:
            UnsupportedDocumentError: another suffix, or the content cannot be read.
            EmptyDocumentError: the file has no text.
        """
        name = _upload_name(filename)
        return self.add_text(collection, _file_text(name, data), doc_id or name, metadata)

    def update(self, collection: str, doc_id: str, text: str | None = None, filename: str | None = None,
               data: bytes | None = None, metadata: Mapping[str, Any] | None = None) -> DocumentInfo:
        """Replace a document's content (text or an uploaded file; metadata kept unless given).

        Raises:
            UnknownCollectionError, DocumentNotFoundError, UnsupportedDocumentError, EmptyDocumentError.
        """
        memory = self.memory(collection)
        if text is None:
            text = _file_text(_upload_name(filename or ""), data or b"")
        with model_lock(self.base.model):
            memory.update(doc_id, text, metadata)
        return memory.get(doc_id)

    def delete(self, collection: str, doc_id: str) -> None:
        """Raises: UnknownCollectionError, DocumentNotFoundError."""
        self.memory(collection).delete(doc_id)


def _upload_name(filename: str) -> str:
    """The uploaded file's base name, checked for a supported suffix."""
    name = Path(filename.replace("\\", "/")).name
    if not name or name.startswith(".") or Path(name).suffix.lower() not in UPLOAD_SUFFIXES:
        raise UnsupportedDocumentError(f"uploads must be {', '.join(sorted(UPLOAD_SUFFIXES))} files; "
                                       f"got {filename!r}")
    return name


def _file_text(name: str, data: bytes) -> str:
    """The text of uploaded bytes, read as a file of that name would be (same checks as the CLI's ingest)."""
    with tempfile.TemporaryDirectory(prefix="lora-memory-upload-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        return load_file(path)


async def _collect(handle: RequestHandle) -> tuple[str, Finished]:
    """The whole answer of a non-streaming request, and how it finished."""
    text = "".join([piece async for piece in handle])
    return text, handle.finished

"""The HTTP layer of ``lora-memory serve``: FastAPI routes over :class:`lora_memory.service.MemoryService`.

Routes (all under one optional API key, ``Authorization: Bearer KEY``):

- ``GET /health``; ``GET /v1/models``, ``GET /v1/models/{model}``;
- ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream: true`` for
  server-sent events), shaped like OpenAI's, with an extra ``lora_memory`` field;
- ``GET /v1/collections``; ``GET|POST /v1/collections/{name}/documents`` (a JSON
  ``{"text", "id", "metadata"}`` body or a multipart upload: ``file``, optional
  ``id`` and ``metadata`` as a JSON string); ``GET|PUT|DELETE
  /v1/collections/{name}/documents/{doc_id}``.

Every error is an OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``
with a 4xx status for bad requests, never a traceback. Request bodies above
``max_upload_bytes`` get a 413 before they reach a route.

Example:
    >>> app = create_app(service, api_key="secret")  # doctest: +SKIP
    >>> with BackgroundServer(app) as server:  # doctest: +SKIP
    ...     print(server.url)  # http://127.0.0.1:PORT
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config import MemoryConfig
from .errors import (
    CorruptEntryError,
    DocumentNotFoundError,
    LoRAMemoryError,
    SchedulerClosedError,
    UnknownCollectionError,
    UnsupportedRequestError,
)
from .openai_schema import ChatCompletionRequest, CompletionRequest, DocumentText, error_body
from .scheduler import DEFAULT_MAX_BATCH_SIZE, Scheduler
from .serve_command import API_KEY_ENV
from .service import MemoryService

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_BYTES = 20 * 2**20  # 20 MiB per request body
GRACEFUL_SHUTDOWN_S = 60  # in-flight requests get this long to finish on shutdown

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


class _RequireApiKey:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <key>``."""

    def __init__(self, app: ASGIApp, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            auth = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), self.key):
                await _send_json(send, 401, error_body("missing or incorrect API key: send "
                                                       "'Authorization: Bearer <key>'", "invalid_request_error",
                                                       code="invalid_api_key"), [(b"www-authenticate", b"Bearer")])
                return
        await self.app(scope, receive, send)


class _LimitBody:
    """ASGI middleware: a request body over ``limit`` bytes gets a 413 (read up to the limit, then replayed)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = error_body(f"the request body exceeds the limit of {self.limit} bytes (--max-upload-mb)",
                               "invalid_request_error", code="request_too_large")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_json(send, 413, too_large)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await _send_json(send, 413, too_large)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: the disconnect message, for streaming responses

        await self.app(scope, replay, send)


def _error_response(status: int, message: str, error_type: str, param: str | None = None,
                    code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, error_type, param, code), status_code=status)


def _library_error(exc: Exception) -> JSONResponse:
    """The status and OpenAI-style body of an error the library raised."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, UnknownCollectionError):
        return _error_response(404, message, "invalid_request_error", "model", "model_not_found")
    if isinstance(exc, DocumentNotFoundError):
        return _error_response(404, message, "invalid_request_error", code="document_not_found")
    if isinstance(exc, SchedulerClosedError):
        return _error_response(503, message, "server_error", code="shutting_down")
    if isinstance(exc, CorruptEntryError):
        logger.error("corrupt stored data: %s", message)
        return _error_response(500, message, "server_error", code="corrupt_entry")
    if isinstance(exc, UnsupportedRequestError):
        return _error_response(400, message, "invalid_request_error", exc.param, "unsupported")
    if isinstance(exc, (ValueError, TypeError, NotImplementedError)):
        return _error_response(400, message, "invalid_request_error")
    logger.exception("request failed", exc_info=exc)
    return _error_response(500, message, "server_error")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
                            for e in errors) or "invalid request"
        return _error_response(400, message, "invalid_request_error", ".".join(loc) or None)

    @app.exception_handler(ValidationError)
    async def invalid_body(request: Request, exc: ValidationError) -> JSONResponse:
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error_response(400, message, "invalid_request_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(exc.status_code, str(exc.detail), kind)

    @app.exception_handler(LoRAMemoryError)
    async def library(request: Request, exc: LoRAMemoryError) -> JSONResponse:
        return _library_error(exc)

    @app.exception_handler(ValueError)
    async def value(request: Request, exc: ValueError) -> JSONResponse:
        return _library_error(exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error_response(500, "internal server error (see the server's log)", "server_error")


async def _document_body(request: Request) -> tuple[str | None, str | None, bytes | None, str | None, Any]:
    """(text, filename, data, id, metadata) of a JSON or multipart document body."""
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise UnsupportedRequestError("a multipart upload needs a 'file' field", "file")
        raw_meta = form.get("metadata")
        try:
            metadata = json.loads(raw_meta) if isinstance(raw_meta, str) and raw_meta else None
        except json.JSONDecodeError as exc:
            raise UnsupportedRequestError(f"metadata is not valid JSON: {exc}", "metadata") from exc
        if metadata is not None and not isinstance(metadata, dict):
            raise UnsupportedRequestError("metadata must be a JSON object", "metadata")
        doc_id = form.get("id")
        return None, upload.filename or "", await upload.read(), doc_id if isinstance(doc_id, str) else None, metadata
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnsupportedRequestError("send a JSON body {\"text\": ...} or a multipart upload with a 'file'",
                                      "text") from exc
    body = DocumentText.model_validate(payload)
    return body.text, None, None, body.id, body.metadata


def create_app(service: MemoryService, api_key: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> ASGIApp:
    """The ASGI app serving ``service``; with ``api_key`` every route requires it."""
    app = FastAPI(title="lora-memory", description="Documents internalized as LoRA adapters, served with the "
                                                    "OpenAI API.", docs_url=None, redoc_url=None, openapi_url=None)
    _install_error_handlers(app)

    def respond(result: dict[str, Any] | Any) -> Any:
        if isinstance(result, dict):
            return JSONResponse(result)
        return StreamingResponse(result, media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "waiting": service.scheduler.pending, "time": time.time()}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": service.models()}

    @app.get("/v1/models/{model}")
    def model(model: str) -> dict[str, Any]:
        for entry in service.models():
            if entry["id"] == model:
                return entry
        raise UnknownCollectionError(f"no collection or model named {model!r}")

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest) -> Any:
        return respond(await service.chat(body))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        return respond(await service.complete(body))

    @app.get("/v1/collections")
    def collections() -> dict[str, Any]:
        return {"object": "list", "data": service.collections()}

    @app.get("/v1/collections/{name}/documents")
    def documents(name: str) -> dict[str, Any]:
        return {"object": "list", "data": [_info(i) for i in service.documents(name)]}

    @app.post("/v1/collections/{name}/documents", status_code=201)
    async def add(name: str, request: Request) -> Any:
        text, filename, data, doc_id, metadata = await _document_body(request)
        if text is None:
            infos = await run_in_threadpool(service.add_file, name, filename or "", data or b"", doc_id, metadata)
        else:
            infos = await run_in_threadpool(service.add_text, name, text, doc_id, metadata)
        return JSONResponse({"object": "list", "data": [_info(i) for i in infos]}, status_code=201)

    @app.get("/v1/collections/{name}/documents/{doc_id:path}")
    def document(name: str, doc_id: str) -> dict[str, Any]:
        return _info(service.document(name, doc_id))

    @app.put("/v1/collections/{name}/documents/{doc_id:path}")
    async def update(name: str, doc_id: str, request: Request) -> dict[str, Any]:
        text, filename, data, new_id, metadata = await _document_body(request)
        if new_id not in (None, doc_id):
            raise UnsupportedRequestError("the body's id differs from the one in the path", "id")
        return _info(await run_in_threadpool(service.update, name, doc_id, text, filename, data, metadata))

    @app.delete("/v1/collections/{name}/documents/{doc_id:path}")
    def delete(name: str, doc_id: str) -> dict[str, Any]:
        service.delete(name, doc_id)
        return {"id": doc_id, "object": "document", "deleted": True}

    wrapped: ASGIApp = _LimitBody(cast(ASGIApp, app), max_upload_bytes)  # FastAPI's scope types are wider
    if api_key:
        wrapped = _RequireApiKey(wrapped, api_key)
    return wrapped


def _info(info: Any) -> dict[str, Any]:
    return {"id": info.doc_id, "object": "document", **info.model_dump(mode="json", exclude={"doc_id"})}


class BackgroundServer:
    """Run an ASGI app with uvicorn in a thread, on ``host`` and a free port unless one is given.

    For tests, examples and the load benchmark; the ``with`` block's exit shuts it
    down gracefully (in-flight requests finish).
    """

    def __init__(self, app: ASGIApp, host: str = DEFAULT_HOST, port: int = 0):
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="lora-memory-http", daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join()


def check_binding(host: str, api_key: str | None) -> None:
    """Raise unless ``host`` is loopback or an API key is set.

    Raises:
        ValueError: ``host`` is reachable from other machines and no API key is set.
    """
    if not api_key and not is_loopback(host):
        raise ValueError(f"binding to {host} needs an API key: pass --api-key or set ${API_KEY_ENV}")


def serve(service: MemoryService, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, api_key: str | None = None,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM finish the requests in flight first).

    Raises:
        ValueError: ``host`` is not a loopback address and no API key is set.
    """
    check_binding(host, api_key)
    app = create_app(service, api_key, max_upload_bytes)
    logger.info("serving %d models on http://%s:%d", len(service.models()), host, port)
    uvicorn.run(app, host=host, port=port, log_level="info", lifespan="off",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)


@contextmanager
def local_server(config: MemoryConfig | None = None, api_key: str | None = None,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE) -> Iterator[str]:
    """Load the models and serve every collection from this process on 127.0.0.1 (a free port).

    Yields the OpenAI base URL, ``http://127.0.0.1:PORT/v1``; the server stops (after
    finishing its requests) when the block ends. What the examples use when no
    ``lora-memory serve`` is running.
    """
    from .loading import load_models

    config = config or MemoryConfig()
    base, hypernet = load_models(config)
    scheduler = Scheduler(base.model, base.tokenizer, max_batch_size=max_batch_size)
    service = MemoryService(config, base, hypernet, scheduler)
    try:
        with BackgroundServer(create_app(service, api_key)) as server:
            yield f"{server.url}/v1"
    finally:
        scheduler.close()
        service.close()


URL_ENV = "LORA_MEMORY_URL"


@contextmanager
def running_or_local_server() -> Iterator[str]:
    """The OpenAI base URL in ``$LORA_MEMORY_URL`` (a server someone started), else :func:`local_server`'s.

    What the server examples use, so they run against ``lora-memory serve`` or on their own.
    """
    if url := os.environ.get(URL_ENV):
        yield url
        return
    with local_server() as url:
        yield url

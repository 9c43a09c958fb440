"""``lora-memory serve``: its options, and the handler that loads the models and runs the server.

FastAPI and uvicorn (the ``serve`` extra) are imported only when the command runs,
so the rest of the CLI works without them.
"""

from __future__ import annotations

import argparse
import logging
import os

from .errors import LoRAMemoryError
from .scheduler import DEFAULT_MAX_BATCH_SIZE

logger = logging.getLogger(__name__)

API_KEY_ENV = "LORA_MEMORY_API_KEY"  # also read by lora_memory.server
SERVE_INSTALL = 'pip install "lora-memory[serve]"'


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``lora-memory serve``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine "
                        "only; any other address needs an API key)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--api-key", default=None, help=f"require 'Authorization: Bearer KEY' on every route "
                        f"(default: ${API_KEY_ENV})")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                        help=f"requests decoded together (default: {DEFAULT_MAX_BATCH_SIZE}; 1 serializes them)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body (default: 20)")
    parser.add_argument("--max-new-tokens", type=int, help="answer length when a request sets no max_tokens")
    parser.add_argument("--top-k", type=int, help="apply the k chunks that best match each question")
    parser.add_argument("--max-rank", type=int, help="compress each applied adapter to this rank")


def run_serve(args: argparse.Namespace) -> int:
    """Serve every collection with the OpenAI API (chat and text completions, streaming) and manage documents."""
    try:
        from .server import check_binding, serve
    except ModuleNotFoundError as exc:
        raise LoRAMemoryError(f"lora-memory serve needs FastAPI and uvicorn: {SERVE_INSTALL}") from exc
    from .cli import memory_config
    from .loading import load_models
    from .scheduler import Scheduler
    from .service import MemoryService

    if args.max_upload_mb <= 0:
        raise ValueError("--max-upload-mb must be positive")
    api_key = args.api_key or os.environ.get(API_KEY_ENV)
    check_binding(args.host, api_key)  # before loading the models
    config = memory_config(args)
    base, hypernet = load_models(config)
    scheduler = Scheduler(base.model, base.tokenizer, max_batch_size=args.max_batch_size)
    service = MemoryService(config, base, hypernet, scheduler)
    try:
        serve(service, host=args.host, port=args.port, api_key=api_key,
              max_upload_bytes=int(args.max_upload_mb * 2**20))
    finally:
        scheduler.close(drain=True)
        service.close()
    return 0

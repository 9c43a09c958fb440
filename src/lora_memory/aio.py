"""Bridging blocking generation to asyncio callers (the memory and the framework integrations)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any


async def iterate_in_thread(pieces: Iterator[str]) -> AsyncIterator[str]:
    """Consume a blocking iterator in worker threads so the event loop never waits on generation.

    A generator is closed when the consumer stops early, which ends the generation behind it.
    """
    done: Any = object()
    try:
        while (item := await asyncio.to_thread(next, pieces, done)) is not done:
            yield item
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            await asyncio.to_thread(close)

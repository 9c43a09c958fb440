"""Run the ``async def`` tests of this package (ours and langchain-tests' standard suites) on asyncio.

LangChain partner packages set ``asyncio_mode = "auto"``; the repository keeps
pytest-asyncio's strict mode, so the coroutine tests collected here are marked
instead (only here: other folders are untouched).
"""

from __future__ import annotations

import inspect

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    if collector.istestfunction(obj, name) and inspect.iscoroutinefunction(obj):
        pytest.mark.asyncio(obj)

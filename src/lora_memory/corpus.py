r"""Bulk corpora: a JSONL file of documents, read one line at a time.

Each line is a JSON object ``{"id": str, "text": str, "metadata": {...}}``
(``id`` and ``metadata`` optional; without an id the document gets the same
``text-<sha256 prefix>`` id as raw text). The file is streamed, never held in
memory, and its documents feed :meth:`lora_memory.memory.LoRAMemory.add_documents`.
A line that is not such an object (bad JSON, an empty or non-string text, a
non-object metadata) is skipped with a warning naming its line number, like an
unreadable file inside a directory; a file with no usable line at all is an error.

Example:
    >>> import json, pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "corpus.jsonl"
    >>> _ = path.write_text(json.dumps({"id": "paris", "text": "Paris is in France."}) + "\n")
    >>> list(iter_jsonl(path))
    [('Paris is in France.', 'paris', {})]
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DocumentNotFoundError, EmptyDocumentError, UnsupportedDocumentError

logger = logging.getLogger(__name__)

JSONL_SUFFIX = ".jsonl"
_KEYS = {"id", "text", "metadata"}


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[str, str | None, dict[str, Any]]]:
    """``(text, id or None, metadata)`` for every usable line of the JSONL file ``path``, lazily.

    Raises:
        DocumentNotFoundError: ``path`` is not a file.
        UnsupportedDocumentError: the file is not UTF-8 text.
        EmptyDocumentError: no line holds a usable document.
    """
    path = Path(path)
    if not path.is_file():
        raise DocumentNotFoundError(f"no such corpus file: {path}")
    used = 0
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                item, problem = _parse(line)
                if item is None:
                    logger.warning("%s line %d skipped: %s", path, number, problem)
                    continue
                used += 1
                yield item
    except UnicodeDecodeError as exc:
        raise UnsupportedDocumentError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                       "a JSONL corpus is UTF-8 JSON, one object per line") from exc
    if not used:
        raise EmptyDocumentError(f"{path} holds no usable document (one JSON object with a non-empty \"text\" per "
                                 "line; see the warnings)")


def count_lines(path: str | os.PathLike[str]) -> int:
    """Non-blank lines of a file: how many documents a JSONL corpus holds at most (for a progress bar's ETA)."""
    with open(path, "rb") as lines:
        return sum(1 for line in lines if line.strip())


def _parse(line: str) -> tuple[tuple[str, str | None, dict[str, Any]], None] | tuple[None, str]:
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg})"
    if not isinstance(item, dict):
        return None, f"a JSON {type(item).__name__}, not an object"
    if unknown := set(item) - _KEYS:
        return None, f"unknown keys {sorted(unknown)} (expected id, text, metadata)"
    text, doc_id, metadata = item.get("text"), item.get("id"), item.get("metadata", {})
    if not isinstance(text, str) or not text.strip():
        return None, "no non-empty string \"text\""
    if doc_id is not None and not isinstance(doc_id, str):
        return None, "\"id\" is not a string"
    if not isinstance(metadata, dict):
        return None, "\"metadata\" is not an object"
    return (text, doc_id, metadata), None

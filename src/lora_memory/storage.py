"""On-disk primitives shared by the adapter cache and collections.

- Adapters become safetensors *bytes* whose header metadata holds the adapter's
  JSON config (and any extra strings, such as a chunk's text): one self-describing
  blob, never a pickle. A *chunk file* is such a blob with the chunk's text; the
  adapter cache stores exactly these bytes, so a cache hit is copied into a
  collection without decoding or re-encoding anything.
- Files are written atomically: a unique temporary file in the same directory,
  flushed and fsynced, then ``os.replace``; a crash leaves the old file or the new
  one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .adapter import LoRAAdapter
from .errors import CorruptEntryError

ADAPTER_CONFIG_KEY = "adapter_config"
CHUNK_TEXT_KEY = "text"
TMP_SUFFIX = ".tmp"
_HEADER_LEN_BYTES = 8  # safetensors: little-endian u64 header length, then the JSON header
MAX_HEADER_BYTES = 100 * 2**20  # 100 MiB, safetensors' own limit: a damaged length never allocates more


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def adapter_to_bytes(adapter: LoRAAdapter, extra: Mapping[str, str] | None = None) -> bytes:
    """Serialise an unbatched adapter as safetensors bytes; ``extra`` strings go into the header metadata.

    Raises:
        ValueError: the adapter is batched, or ``extra`` uses a reserved key.
    """
    if adapter.batched:
        raise ValueError("only unbatched adapters can be stored; call unbatch() first")
    extra = dict(extra or {})
    if {"format", ADAPTER_CONFIG_KEY} & set(extra):
        raise ValueError(f"'format' and {ADAPTER_CONFIG_KEY!r} are reserved metadata keys")
    tensors = {k: v.cpu() for k, v in adapter.state_dict().items()}
    metadata = {"format": "pt", ADAPTER_CONFIG_KEY: json.dumps(adapter.config_dict(), sort_keys=True), **extra}
    return save_tensors(tensors, metadata=metadata)


def chunk_file_bytes(adapter: LoRAAdapter, text: str) -> bytes:
    """The bytes of a chunk file: the chunk's adapter with its text in the header metadata."""
    return adapter_to_bytes(adapter, {CHUNK_TEXT_KEY: text})


def check_chunk_file_header(data: bytes) -> None:
    """Raise unless ``data`` starts with a chunk file's header (an adapter config and a text); reads no tensors.

    Raises:
        CorruptEntryError: the header is truncated, not JSON, or lacks either key.
    """
    missing = {ADAPTER_CONFIG_KEY, CHUNK_TEXT_KEY} - set(safetensors_metadata(data))
    if missing:
        raise CorruptEntryError(f"not a chunk file: its header lacks {sorted(missing)}")


def adapter_from_bytes(data: bytes, device: str | torch.device = "cpu") -> LoRAAdapter:
    """Rebuild an adapter from :func:`adapter_to_bytes` output.

    Raises:
        CorruptEntryError: the bytes are not a valid stored adapter.
    """
    try:
        config = json.loads(safetensors_metadata(data)[ADAPTER_CONFIG_KEY])
        tensors = load_tensors(data)
    except (KeyError, json.JSONDecodeError, SafetensorError) as exc:
        raise CorruptEntryError(f"stored adapter cannot be parsed: {exc}") from exc
    adapter = LoRAAdapter.from_state_dict(tensors, config)
    return adapter if str(device) == "cpu" else adapter.to(device)


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (or of a file's first bytes), without reading tensors.

    Raises:
        CorruptEntryError: the header is truncated or not JSON.
    """
    if len(data) < _HEADER_LEN_BYTES:
        raise CorruptEntryError("safetensors data is truncated (no header)")
    n = _header_length(data[:_HEADER_LEN_BYTES])
    header = data[_HEADER_LEN_BYTES:_HEADER_LEN_BYTES + n]
    if len(header) < n:
        raise CorruptEntryError("safetensors header is truncated")
    try:
        return dict(json.loads(header).get("__metadata__", {}))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise CorruptEntryError(f"safetensors header is not valid JSON: {exc}") from exc


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """:func:`safetensors_metadata` of a file, reading only its header.

    Raises:
        OSError: the file cannot be read.
        CorruptEntryError: the header is truncated, too long or not JSON.
    """
    with open(path, "rb") as f:
        head = f.read(_HEADER_LEN_BYTES)
        n = _header_length(head) if len(head) == _HEADER_LEN_BYTES else 0
        return safetensors_metadata(head + f.read(n))


def _header_length(head: bytes) -> int:
    n = int.from_bytes(head, "little")
    if n > MAX_HEADER_BYTES:
        raise CorruptEntryError(f"safetensors header claims {n} bytes (more than {MAX_HEADER_BYTES}): damaged")
    return n


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old content or all of the new, never a mix.

    Raises:
        OSError: the directory is not writable or the disk is full (``path`` is left untouched).
    """
    atomic_write_many({path: data})


def atomic_write_many(files: Mapping[Path, bytes]) -> None:
    """:func:`atomic_write` for several files: each file is fsynced, each directory once at the end.

    A batch of N chunk files costs N + 1 fsyncs instead of 2N. Files already
    replaced stay written if a later one fails.

    Raises:
        OSError: a directory is not writable or the disk is full (the failing path is left untouched).
    """
    directories: dict[Path, None] = {}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=TMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directories[path.parent] = None
    for directory in directories:
        _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Where lora-memory keeps files on disk.

Everything lives under one home directory so a user can see, move or delete it:
``$LORA_MEMORY_HOME`` when set, otherwise the platform's user cache directory.
Converted base models can live elsewhere (``$LORA_MEMORY_MODELS``), so tests and
throwaway homes reuse the one-off GGUF conversion instead of repeating it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import platformdirs

from .errors import InvalidNameError

HOME_ENV = "LORA_MEMORY_HOME"
MODELS_ENV = "LORA_MEMORY_MODELS"
MAX_NAME_CHARS = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def home() -> Path:
    """The root directory for converted models, adapter caches and collections."""
    env = os.environ.get(HOME_ENV)
    root = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("lora-memory"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    """Converted base models (safetensors copies of the embedded GGUF): ``$LORA_MEMORY_MODELS`` or ``home()/models``."""
    env = os.environ.get(MODELS_ENV)
    if env:
        path = Path(env).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return _sub("models")


def collections_dir() -> Path:
    """Default parent directory of named collections."""
    return _sub("collections")


def check_collection_name(name: str) -> str:
    """Return ``name`` if it is a valid collection name: letters, digits, '.', '_' and '-', starting with a letter or
    digit, at most ``MAX_NAME_CHARS`` characters; never a path, so a collection is always a child of
    :func:`collections_dir`.

    Raises:
        InvalidNameError: anything else (``..``, ``a/b``, ``/abs``, an empty name, a trailing newline...).
    """
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
        raise InvalidNameError(f"name: collection names use letters, digits, '.', '_' and '-' (at most "
                               f"{MAX_NAME_CHARS}, starting with a letter or digit); got {name!r}. "
                               "To use a directory, pass it explicitly (--directory, directory=)")
    return name


def collection_dir(name: str) -> Path:
    """The directory of the named collection, ``collections_dir() / name`` (not created).

    Raises:
        InvalidNameError: ``name`` is not a valid collection name (see :func:`check_collection_name`).
    """
    return collections_dir() / check_collection_name(name)


def adapter_cache_dir() -> Path:
    """Default content-addressed adapter cache, shared by all collections."""
    return _sub("adapter-cache")


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path

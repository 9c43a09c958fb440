"""Where lora-memory keeps files on disk.

Everything lives under one home directory so a user can see, move or delete it:
``$LORA_MEMORY_HOME`` when set, otherwise the platform's user cache directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

HOME_ENV = "LORA_MEMORY_HOME"


def home() -> Path:
    """The root directory for converted models, adapter caches and collections."""
    env = os.environ.get(HOME_ENV)
    root = Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("lora-memory"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    """Converted base models (safetensors copies of the embedded GGUF)."""
    return _sub("models")


def collections_dir() -> Path:
    """Default parent directory of named collections."""
    return _sub("collections")


def adapter_cache_dir() -> Path:
    """Default content-addressed adapter cache, shared by all collections."""
    return _sub("adapter-cache")


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path

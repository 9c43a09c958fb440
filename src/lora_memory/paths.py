"""Where lora-memory keeps files on disk.

Everything lives under one home directory so a user can see, move or delete it:
``$LORA_MEMORY_HOME`` when set, otherwise the platform's user cache directory.
Converted base models can live elsewhere (``$LORA_MEMORY_MODELS``), so tests and
throwaway homes reuse the one-off GGUF conversion instead of repeating it.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

HOME_ENV = "LORA_MEMORY_HOME"
MODELS_ENV = "LORA_MEMORY_MODELS"


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


def adapter_cache_dir() -> Path:
    """Default content-addressed adapter cache, shared by all collections."""
    return _sub("adapter-cache")


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path

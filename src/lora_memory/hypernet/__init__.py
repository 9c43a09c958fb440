"""Hypernetworks that write LoRA adapters: Doc-to-LoRA (documents)."""

from .config import HypernetConfig
from .model import DocToLoRA
from .targets import TargetModule, find_targets

__all__ = ["DocToLoRA", "HypernetConfig", "TargetModule", "find_targets"]

"""Loading the two models a memory runs on (base LLM and Doc-to-LoRA hypernetwork) from its config."""

from __future__ import annotations

from .base import LoadedModel, load_base_model
from .checkpoints import load_hypernet
from .config import MemoryConfig
from .hypernet import DocToLoRA


def load_models(config: MemoryConfig, base: LoadedModel | None = None,
                hypernet: DocToLoRA | None = None) -> tuple[LoadedModel, DocToLoRA]:
    """The base model and hypernetwork ``config`` names; objects passed in are used as they are.

    Raises:
        ModelNotFoundError: the base model or the hypernetwork checkpoint cannot be found.
        IncompatibleAdapterError: the hypernetwork was built for another base model.
        CorruptEntryError: the hypernetwork checkpoint cannot be read.
    """
    if base is None:
        base = load_base_model(config.base_model, dtype=config.dtype, device=config.device)
    if hypernet is None:
        hypernet = load_hypernet(config.hypernet, base)
    hypernet.check_base(base)
    return base, hypernet

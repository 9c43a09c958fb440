"""Loading the two models a memory runs on (base LLM and Doc-to-LoRA hypernetwork) from its config."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .base import BaseModel, load_base_model
from .config import MemoryConfig
from .errors import IncompatibleAdapterError, ModelNotFoundError
from .hypernet import DocToLoRA, default_hypernet_dir
from .hypernet.pretrained import CONFIG_NAME

logger = logging.getLogger(__name__)

SHIPPED_HYPERNET = default_hypernet_dir()
RANDOM_INIT_SEED = 0  # a seeded random init has a stable fingerprint, so its collections reopen


def load_models(config: MemoryConfig, base: BaseModel | None = None,
                hypernet: DocToLoRA | None = None) -> tuple[BaseModel, DocToLoRA]:
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


def load_hypernet(path: str | Path | None, base: BaseModel) -> DocToLoRA:
    """A checkpoint from ``path``; with None the shipped checkpoint, else a seeded random init.

    Raises:
        ModelNotFoundError: ``path`` is not a checkpoint directory.
        IncompatibleAdapterError: the checkpoint at ``path`` was built for another base model.
        CorruptEntryError: the checkpoint cannot be read.
    """
    if path is not None:
        if not (Path(path) / CONFIG_NAME).is_file():
            raise ModelNotFoundError(f"no hypernetwork checkpoint at {path} (expected {CONFIG_NAME} there)")
        return DocToLoRA.from_pretrained(path, base=base, device=base.device)
    if (SHIPPED_HYPERNET / CONFIG_NAME).is_file():
        try:
            return DocToLoRA.from_pretrained(SHIPPED_HYPERNET, base=base, device=base.device)
        except IncompatibleAdapterError as exc:
            logger.warning("the shipped hypernetwork does not fit %s: %s", base.name, exc)
    logger.warning("no trained hypernetwork for %s: using a random initialisation (seed %d); adapters will "
                   "carry no knowledge of the documents. Pass a trained checkpoint with hypernet=...",
                   base.name, RANDOM_INIT_SEED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return DocToLoRA.for_base_model(base).to(base.device).eval()

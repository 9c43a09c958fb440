"""The checkpoints shipped for the embedded model, and the one "shipped or seeded random" loading decision.

The directories beside this module hold a Doc-to-LoRA (``d2l-smollm2-135m``) and a
Text-to-LoRA (``t2l-smollm2-135m``) checkpoint, each a ``config.json`` beside a
``model.safetensors``. Either may be absent in a development checkout.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch

from ..base import LoadedModel
from ..errors import IncompatibleAdapterError, ModelNotFoundError
from ..hypernet import DocToLoRA
from ..hypernet.pretrained import CONFIG_NAME

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = Path(__file__).resolve().parent
RANDOM_INIT_SEED = 0  # a seeded random init has a stable fingerprint, so its collections reopen


def default_hypernet_dir() -> Path:
    """The Doc-to-LoRA checkpoint shipped for the embedded model (may be absent in a dev checkout)."""
    return CHECKPOINTS_DIR / "d2l-smollm2-135m"


def default_t2l_dir() -> Path:
    """The Text-to-LoRA checkpoint shipped for the embedded model (may be absent in a dev checkout)."""
    return CHECKPOINTS_DIR / "t2l-smollm2-135m"


SHIPPED_HYPERNET = default_hypernet_dir()
HypernetSource = Literal["path", "shipped", "random"]


def resolve_hypernet(path: str | Path | None, base: LoadedModel, seed: int = RANDOM_INIT_SEED, *,
                     fall_back: bool = True) -> tuple[DocToLoRA, HypernetSource]:
    """The hypernetwork to use and where it came from: ``path``, else the shipped checkpoint, else a seeded random init.

    This is the one place that decides between a trained checkpoint and a random
    initialisation; the memory, the evaluations, the benchmarks and the demo all ask it.

    Args:
        path: a checkpoint directory, or None for the shipped one.
        base: the base model the hypernetwork is for.
        seed: the random initialisation's seed (its fingerprint is stable, so its collections reopen).
        fall_back: when the shipped checkpoint does not fit ``base``, warn and use a random init;
            False raises instead (benchmarks never measure a stand-in silently).

    Raises:
        ModelNotFoundError: ``path`` is not a checkpoint directory.
        IncompatibleAdapterError: the checkpoint at ``path`` (or, without ``fall_back``, the
            shipped one) was built for another base model.
        CorruptEntryError: the checkpoint cannot be read.
    """
    if path is not None:
        if not (Path(path) / CONFIG_NAME).is_file():
            raise ModelNotFoundError(f"no hypernetwork checkpoint at {path} (expected {CONFIG_NAME} there)")
        return DocToLoRA.from_pretrained(path, base=base, device=base.device), "path"
    if (SHIPPED_HYPERNET / CONFIG_NAME).is_file():
        try:
            return DocToLoRA.from_pretrained(SHIPPED_HYPERNET, base=base, device=base.device), "shipped"
        except IncompatibleAdapterError as exc:
            if not fall_back:
                raise
            logger.warning("the shipped hypernetwork does not fit %s: %s", base.name, exc)
    logger.warning("no trained hypernetwork for %s: using a random initialisation (seed %d); adapters will "
                   "carry no knowledge of the documents. Pass a trained checkpoint with hypernet=...",
                   base.name, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DocToLoRA.for_base_model(base).to(base.device).eval(), "random"


def load_hypernet(path: str | Path | None, base: LoadedModel) -> DocToLoRA:
    """A checkpoint from ``path``; with None the shipped checkpoint, else a seeded random init.

    Raises:
        ModelNotFoundError: ``path`` is not a checkpoint directory.
        IncompatibleAdapterError: the checkpoint at ``path`` was built for another base model.
        CorruptEntryError: the checkpoint cannot be read.
    """
    return resolve_hypernet(path, base)[0]

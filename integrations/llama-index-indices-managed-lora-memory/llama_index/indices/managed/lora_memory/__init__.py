"""lora-memory for LlamaIndex: a managed index, a query engine and an LLM that answer from internalized documents.

Example:
    >>> from llama_index.indices.managed.lora_memory import LoRAMemoryIndex  # doctest: +SKIP
    >>> index = LoRAMemoryIndex.from_documents(documents)  # doctest: +SKIP
    >>> print(index.as_query_engine().query("..."))  # doctest: +SKIP
"""

from llama_index.indices.managed.lora_memory.base import LoRAMemoryIndex
from llama_index.indices.managed.lora_memory.llm import LoRAMemoryLLM
from llama_index.indices.managed.lora_memory.query_engine import LoRAMemoryQueryEngine

__all__ = ["LoRAMemoryIndex", "LoRAMemoryLLM", "LoRAMemoryQueryEngine"]

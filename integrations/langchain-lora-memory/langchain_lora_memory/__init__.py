"""lora-memory for LangChain: a chat model, an LLM, an agent tool and ingestion helpers.

Documents are internalized once as LoRA adapters; the models answer with the
adapter applied and no retrieved text in the prompt.

Example:
    >>> from langchain_lora_memory import ChatLoRAMemory  # doctest: +SKIP
    >>> chat = ChatLoRAMemory.from_documents(docs)  # doctest: +SKIP
"""

from importlib import metadata

from langchain_lora_memory.chat_models import ChatLoRAMemory
from langchain_lora_memory.documents import add_documents, add_from_loader
from langchain_lora_memory.llms import LoRAMemoryLLM
from langchain_lora_memory.tools import create_memory_tool

try:
    __version__ = metadata.version(__package__)
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = ""

__all__ = [
    "ChatLoRAMemory",
    "LoRAMemoryLLM",
    "__version__",
    "add_documents",
    "add_from_loader",
    "create_memory_tool",
]

"""Ingesting LangChain documents and document loaders into a lora-memory collection.

Any LangChain loader works (``TextLoader``, ``PyPDFLoader``, ``WebBaseLoader``...):
its documents are streamed into the memory with ``lazy_load`` and internalized
as adapters. Chunking is the memory's (by base-model tokens), so there is no
text splitter in the way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document

if TYPE_CHECKING:
    from lora_memory import LoRAMemory


def add_documents(memory: LoRAMemory, documents: Iterable[Document]) -> list[str]:
    """Internalize LangChain documents; each keeps its ``id`` (None: derived from the text) and ``metadata``.

    Returns:
        The memory's document ids, in order.

    Raises:
        lora_memory.errors.EmptyDocumentError: a document has no text.
        lora_memory.errors.DuplicateDocumentError: two documents have the same ``id`` (those before
            the second are added; nothing is silently replaced).
    """
    return memory.add_documents((doc.page_content, doc.id, dict(doc.metadata)) for doc in documents)


def add_from_loader(memory: LoRAMemory, loader: BaseLoader) -> list[str]:
    """Internalize every document a loader yields (read lazily, one at a time).

    Returns:
        The memory's document ids, in order.

    Raises:
        lora_memory.errors.EmptyDocumentError: a loaded document has no text.
    """
    return add_documents(memory, loader.lazy_load())


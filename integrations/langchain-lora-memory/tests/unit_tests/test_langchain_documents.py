"""Ingesting LangChain documents and loaders into the fake memory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document

from langchain_lora_memory import add_documents, add_from_loader
from lora_memory.errors import EmptyDocumentError
from lora_memory.loaders import text_doc_id


class ListLoader(BaseLoader):
    """Yields the given texts as documents, counting how many were read."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.read = 0

    def lazy_load(self) -> Iterator[Document]:
        for i, text in enumerate(self.texts):
            self.read += 1
            yield Document(page_content=text, metadata={"source": f"file-{i}.txt"})


def test_add_documents_keeps_ids_and_metadata(fake_memory):
    docs = [Document("Mira Tesk founded the chess club.", id="club", metadata={"topic": "people"}),
            Document("Quenford has two rivers.")]
    assert add_documents(fake_memory, docs) == ["club", text_doc_id("Quenford has two rivers.")]
    assert fake_memory.get("club").metadata == {"topic": "people"}


def test_add_from_loader_reads_every_document(fake_memory):
    loader = ListLoader(["First file text.", "Second file text."])
    ids = add_from_loader(fake_memory, loader)
    assert loader.read == 2
    assert [fake_memory.get(i).metadata["source"] for i in ids] == ["file-0.txt", "file-1.txt"]


def test_empty_document_raises_and_keeps_earlier_ones(fake_memory):
    with pytest.raises(EmptyDocumentError):
        add_documents(fake_memory, [Document("Kept.", id="kept"), Document("   ", id="empty")])
    assert [info.doc_id for info in fake_memory.list()] == ["kept"]

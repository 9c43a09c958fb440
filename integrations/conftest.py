"""Fixtures shared by the LlamaIndex and LangChain integration tests.

``FakeMemory`` is a faithful in-process stand-in for :class:`lora_memory.LoRAMemory`
(the memory contract: same methods, same return types, same errors) whose answers
are fixed and deterministic, so wrapper tests check exactly what the frameworks
receive without running a model. ``tiny_memory`` is the real ``LoRAMemory`` on a
tiny random llama with a random-init hypernetwork, for the wrappers' integration
tests; ``embedded_memory`` is the real memory on the embedded model (``slow``).

The tiny-model fixtures of ``tests/conftest.py`` are re-exported from that file,
so there is one definition of them.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lora_memory import Answer, DocumentInfo, GenerationConfig, LoRAMemory, MemoryConfig, Source
from lora_memory.errors import DocumentNotFoundError, DuplicateDocumentError, EmptyDocumentError
from lora_memory.loaders import text_doc_id


def _load_core_test_module(filename: str, module_name: str) -> Any:
    """A module of the core ``tests/`` folder (not on ``sys.path`` when only ``integrations/`` is collected)."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = Path(__file__).resolve().parents[1] / "tests" / filename
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


_shared = _load_core_test_module("conftest.py", "lora_memory_core_test_fixtures")
lora_memory_home = _shared.lora_memory_home
tokenizer = _shared.tokenizer
tiny_llama = _shared.tiny_llama
embedded_base = _shared.embedded_base
memory_support = _load_core_test_module("memory_support.py", "memory_support")

FAKE_CONTEXT_WINDOW = 2048
FAKE_BASE_NAME = "fake-base"
SNIPPET_CHARS = 200


class _FakeBase:
    """The parts of :class:`lora_memory.base.BaseModel` the wrappers read: name and context window."""

    name = FAKE_BASE_NAME

    class model:  # noqa: N801 - mirrors BaseModel.model.config.max_position_embeddings
        class config:  # noqa: N801
            max_position_embeddings = FAKE_CONTEXT_WINDOW


class FakeMemory:
    """Implements the memory contract with deterministic answers.

    Documents are split into chunks of ``chunk_words`` words. Every answer is
    ``"<n> chunks say: <question>"`` (the last user message for chat input), cut
    to ``max_new_tokens`` words and at the first stop string; its sources are every
    chunk (the contract's "top_k=None applies every chunk"), ordered by document
    insertion. Tokens are words. Each call is recorded in ``calls`` as
    ``(method, question, settings)`` so tests can check what the wrappers passed.
    """

    def __init__(self, name: str = "fake", chunk_words: int = 6, config: MemoryConfig | None = None):
        self.name = name
        self.config = config or MemoryConfig()
        self.base = _FakeBase()
        self.hypernet = None
        self.chunk_words = chunk_words
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []
        self._docs: dict[str, tuple[list[str], dict[str, Any], str | None, float]] = {}

    # ------------------------------------------------------------ ingestion
    def add(self, source: str | Iterable[str], *, doc_id: str | None = None, metadata: dict | None = None,
            glob: str = "**/*", progress: bool = True) -> list[str]:
        texts = [source] if isinstance(source, str) else list(source)
        if doc_id is not None and len(texts) > 1:
            raise ValueError("doc_id was given but the source holds more than one document")
        return self.add_documents((text, doc_id, dict(metadata or {})) for text in texts)

    def add_documents(self, docs: Iterable[tuple[str, str | None, dict]], *, progress: bool = False) -> list[str]:
        ids: list[str] = []
        for text, doc_id, metadata in docs:
            if doc_id is not None and doc_id in ids:
                raise DuplicateDocumentError(f"document id {doc_id!r} is given twice")
            words = text.split()
            if not words:
                raise EmptyDocumentError(f"document {doc_id!r} has no text")
            doc_id = doc_id or text_doc_id(text)
            chunks = [" ".join(words[i:i + self.chunk_words]) for i in range(0, len(words), self.chunk_words)]
            self._docs[doc_id] = (chunks, dict(metadata or {}), None, time.time())
            ids.append(doc_id)
        return ids

    def update(self, doc_id: str, source: str, metadata: dict | None = None) -> str:
        self.get(doc_id)
        return self.add_documents([(source, doc_id, metadata or {})])[0]

    def delete(self, doc_id: str) -> None:
        self.get(doc_id)
        del self._docs[doc_id]

    def get(self, doc_id: str) -> DocumentInfo:
        if doc_id not in self._docs:
            raise DocumentNotFoundError(f"no document {doc_id!r} in collection {self.name!r}")
        chunks, metadata, source, added = self._docs[doc_id]
        return DocumentInfo(doc_id=doc_id, n_chunks=len(chunks), n_tokens=sum(len(c.split()) for c in chunks),
                            metadata=metadata, source=source, added_at=added)

    def list(self) -> list[DocumentInfo]:
        return [self.get(doc_id) for doc_id in self._docs]

    def __len__(self) -> int:
        return len(self._docs)

    # -------------------------------------------------------------- answers
    def _settings(self, generation: GenerationConfig | None, overrides: dict[str, Any]) -> GenerationConfig:
        base = (generation or self.config.generation).model_dump()
        return GenerationConfig(**{**base, **overrides})

    def _answer(self, method: str, question: Any, task: str | None, generation: GenerationConfig | None,
                overrides: dict[str, Any]) -> Answer:
        settings = self._settings(generation, overrides)
        self.calls.append((method, question, {**settings.model_dump(), "task": task}))
        asked = question if isinstance(question, str) else question[-1]["content"]
        sources = [Source(doc_id=doc_id, chunk_index=i, metadata=meta, snippet=chunk[:SNIPPET_CHARS], score=None)
                   for doc_id, (chunks, meta, _, _) in self._docs.items() for i, chunk in enumerate(chunks)]
        words = f"{len(sources)} chunks say: {asked}".split()[:settings.max_new_tokens]
        text = " ".join(words)
        for stop in settings.stop:
            text = text.split(stop)[0]
        prompt = question if isinstance(question, str) else " ".join(m["content"] for m in question)
        return Answer(text=text, sources=sources, adapter_rank=8 * len(sources),
                      timings={"compose": 0.0, "generate": 0.0, "total": 0.0},
                      prompt_tokens=len(prompt.split()), completion_tokens=len(text.split()),
                      closed_book=not sources)

    @staticmethod
    def _pieces(text: str) -> list[str]:
        """Word-sized pieces that join back to ``text``."""
        words = text.split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []

    def ask(self, question: Any, *, task: str | None = None, generation: GenerationConfig | None = None,
            **overrides: Any) -> Answer:
        return self._answer("ask", question, task, generation, overrides)

    def stream(self, question: Any, *, task: str | None = None, generation: GenerationConfig | None = None,
               **overrides: Any) -> Iterator[str]:
        return iter(self._pieces(self._answer("stream", question, task, generation, overrides).text))

    def ask_stream(self, question: Any, *, task: str | None = None, generation: GenerationConfig | None = None,
                   **overrides: Any) -> tuple[Iterator[str], Answer]:
        final = self._answer("ask_stream", question, task, generation, overrides)
        answer = final.model_copy(update={"text": "", "completion_tokens": 0, "timings": {"compose": 0.0}})

        def pieces() -> Iterator[str]:  # like the real memory: text and counts are filled in at the end
            yield from self._pieces(final.text)
            answer.text, answer.completion_tokens, answer.timings = final.text, final.completion_tokens, final.timings

        return pieces(), answer

    async def aask(self, question: Any, *, task: str | None = None, generation: GenerationConfig | None = None,
                   **overrides: Any) -> Answer:
        return self._answer("aask", question, task, generation, overrides)

    async def astream(self, question: Any, *, task: str | None = None, generation: GenerationConfig | None = None,
                      **overrides: Any) -> AsyncIterator[str]:
        for piece in self._pieces(self._answer("astream", question, task, generation, overrides).text):
            yield piece


@pytest.fixture
def fake_memory() -> FakeMemory:
    """An empty fake memory."""
    return FakeMemory()


@pytest.fixture
def tiny_memory(tmp_path: Path, tiny_llama: Any) -> LoRAMemory:
    """The real memory on the shared tiny random llama with a random hypernetwork (fast, exact)."""
    hypernet = memory_support.tiny_hypernet(tiny_llama)  # adapters that are not zero, so they change answers
    # top_k=None: every chunk is applied and reported, as the wrappers' tests expect (the default routes)
    config = MemoryConfig(top_k=None, generation=GenerationConfig(max_new_tokens=6), cache_dir=tmp_path / "cache")
    return LoRAMemory.open(name="tiny", directory=tmp_path / "tiny", config=config, base=tiny_llama,
                           hypernet=hypernet)


@pytest.fixture(scope="session")
def embedded_memory(tmp_path_factory: pytest.TempPathFactory, embedded_base: Any) -> LoRAMemory:
    """The real memory on the embedded model (default hypernetwork), holding two short facts; for slow tests."""
    directory = tmp_path_factory.mktemp("embedded-collection")
    config = MemoryConfig(top_k=None, generation=GenerationConfig(max_new_tokens=8))  # every chunk, as above
    memory = LoRAMemory.open(name="embedded-tests", directory=directory, config=config, base=embedded_base)
    memory.add_documents([("The Zorblat bridge in Quenford was painted teal in 1987.", "bridge", {"topic": "city"}),
                          ("Mira Tesk founded the Quenford chess club.", "club", {"topic": "people"})])
    return memory

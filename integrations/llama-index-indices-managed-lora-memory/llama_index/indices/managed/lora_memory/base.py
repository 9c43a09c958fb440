"""``LoRAMemoryIndex``: a LlamaIndex managed index whose "store" is a lora-memory collection.

Documents are internalized (one hypernetwork pass per chunk turns them into LoRA
adapters) instead of embedded for retrieval; queries are answered by the base
model with the adapter applied and no document text in the prompt. The swap
from a RAG pipeline is two lines::

    index = LoRAMemoryIndex.from_documents(documents)   # was VectorStoreIndex.from_documents
    engine = index.as_query_engine()                    # unchanged

Chunking is the memory's (by base-model tokens, ``MemoryConfig.chunk_tokens``),
so LlamaIndex ``transformations`` do not apply. There is no text to retrieve, so
:meth:`LoRAMemoryIndex.as_retriever` raises; ``source_nodes`` on every response
still say which documents' adapters answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.chat_engine import CondenseQuestionChatEngine, SimpleChatEngine
from llama_index.core.chat_engine.types import BaseChatEngine, ChatMode
from llama_index.core.data_structs.data_structs import IndexDict
from llama_index.core.indices.managed.base import BaseManagedIndex
from llama_index.core.llms import LLM
from llama_index.core.schema import BaseNode, Document, MetadataMode, TransformComponent
from llama_index.core.storage.docstore.types import RefDocInfo
from llama_index.core.storage.storage_context import StorageContext

from ._utils import chunk_node_id
from .llm import LoRAMemoryLLM
from .query_engine import LoRAMemoryQueryEngine

if TYPE_CHECKING:
    from lora_memory import LoRAMemory

logger = logging.getLogger(__name__)

NO_RETRIEVAL = (
    "LoRAMemoryIndex retrieves no text: documents are internalized as LoRA adapters, and answers come from the "
    "base model with the adapter applied. Use index.as_query_engine() (answers carry source_nodes) or "
    "index.as_chat_engine()."
)


class LoRAMemoryIndex(BaseManagedIndex):
    """A managed index backed by a lora-memory collection.

    Args:
        memory: an open ``lora_memory.LoRAMemory`` (see :meth:`from_documents` to
            open one and ingest in one call).
        storage_context: where LlamaIndex keeps its bookkeeping (the index struct
            and document hashes used by ``refresh_ref_docs``); the documents
            themselves live in the memory.
        show_progress: show progress bars while internalizing.
        callback_manager: LlamaIndex callbacks.

    Example:
        >>> index = LoRAMemoryIndex.from_documents([Document(text="Mira founded the chess club.")])  # doctest: +SKIP
        >>> print(index.as_query_engine().query("Who founded the chess club?"))  # doctest: +SKIP
    """

    def __init__(self, memory: LoRAMemory, *, storage_context: StorageContext | None = None,
                 show_progress: bool = False, callback_manager: CallbackManager | None = None) -> None:
        self._memory = memory
        super().__init__(index_struct=IndexDict(), storage_context=storage_context, show_progress=show_progress,
                         callback_manager=callback_manager)

    @property
    def memory(self) -> LoRAMemory:
        """The lora-memory collection behind this index."""
        return self._memory

    @classmethod
    def from_documents(  # type: ignore[override]  (memory options replace vector-store ones)
        cls,
        documents: Sequence[Document],
        memory: LoRAMemory | None = None,
        collection: str = "default",
        *,
        directory: str | Path | None = None,
        storage_context: StorageContext | None = None,
        show_progress: bool = False,
        callback_manager: CallbackManager | None = None,
        transformations: list[TransformComponent] | None = None,
        **config: Any,
    ) -> LoRAMemoryIndex:
        """Internalize ``documents`` into a memory and return the index over it.

        Args:
            documents: LlamaIndex documents; each keeps its ``id_`` (re-ingesting an
                id replaces that document) and its ``metadata``.
            memory: an open memory to add to; by default the collection
                ``collection`` is opened (or created) under ``directory``.
            collection: name of the collection to open when ``memory`` is None.
            directory: where that collection lives (default: the lora-memory home).
            storage_context: as for any index.
            show_progress: as for any index.
            callback_manager: as for any index.
            transformations: not supported; chunking is by base-model tokens
                (``MemoryConfig.chunk_tokens``).
            **config: ``lora_memory.MemoryConfig`` fields (``base_model``,
                ``top_k``, ``max_rank``...) for the memory opened here.

        Raises:
            ValueError: ``transformations`` are given, or ``config`` fields are given
                together with an already open ``memory``.
            lora_memory.errors.LoRAMemoryError: a document is empty, two documents share
                an ``id_`` (``DuplicateDocumentError``: never a silent replacement), the
                collection name is a path (``InvalidNameError``: pass ``directory``), or
                the memory cannot be opened (nothing already stored is lost).
        """
        if transformations:
            raise ValueError("LoRAMemoryIndex chunks by base-model tokens; LlamaIndex transformations do not "
                             "apply (set MemoryConfig.chunk_tokens instead)")
        if memory is None:
            from lora_memory import LoRAMemory, MemoryConfig

            memory = LoRAMemory.open(name=collection, directory=directory, config=MemoryConfig(**config))
        elif config:
            raise ValueError(f"memory settings {sorted(config)} only apply when from_documents opens the memory; "
                             "this memory is already open")
        index = cls(memory, storage_context=storage_context, show_progress=show_progress,
                    callback_manager=callback_manager)
        with index._callback_manager.as_trace("index_construction"):
            index._add_documents(documents)
        return index

    # ---------------------------------------------------------------- ingestion
    def _add_documents(self, documents: Sequence[Document]) -> None:
        self._memory.add_documents((doc.get_content(MetadataMode.NONE), doc.id_, dict(doc.metadata))
                                   for doc in documents)
        for doc in documents:  # lets refresh_ref_docs skip unchanged documents, as in every LlamaIndex index
            self.docstore.set_document_hash(doc.id_, doc.hash)

    def insert(self, document: Document, **insert_kwargs: Any) -> None:
        """Internalize one document (an existing ``id_`` is replaced)."""
        with self._callback_manager.as_trace("insert"):
            self._add_documents([document])

    def _insert(self, nodes: Sequence[BaseNode], **insert_kwargs: Any) -> None:
        """``insert_nodes``: each node becomes its own memory document, keyed by its node id."""
        self._memory.add_documents(
            (node.get_content(MetadataMode.NONE), node.node_id, {**node.metadata, "ref_doc_id": node.ref_doc_id})
            for node in nodes)

    def update_ref_doc(self, document: Document, **update_kwargs: Any) -> None:
        """Replace a document's text and metadata, or add it if its id is new (as in every LlamaIndex index).

        Its adapters are recomputed; chunks whose text did not change come from the cache.
        """
        with self._callback_manager.as_trace("update_ref_doc"):
            self._add_documents([document])

    def delete_ref_doc(self, ref_doc_id: str, delete_from_docstore: bool = False, **delete_kwargs: Any) -> None:
        """Forget a document and its adapters. An unknown id logs a warning, as in every LlamaIndex index."""
        from lora_memory.errors import DocumentNotFoundError

        try:
            self._memory.delete(ref_doc_id)
        except DocumentNotFoundError:
            logger.warning("ref_doc_id %s not found, nothing deleted.", ref_doc_id)
            return
        if delete_from_docstore:
            self.docstore.delete_ref_doc(ref_doc_id, raise_error=False)

    # The base class's async variants go through LlamaIndex's docstore and transformations,
    # which this index does not use: run the sync methods in a worker thread instead.
    async def ainsert(self, document: Document, **insert_kwargs: Any) -> None:
        """Async :meth:`insert` (runs in a worker thread)."""
        await asyncio.to_thread(self.insert, document)

    async def aupdate_ref_doc(self, document: Document, **update_kwargs: Any) -> None:
        """Async :meth:`update_ref_doc` (runs in a worker thread)."""
        await asyncio.to_thread(self.update_ref_doc, document)

    async def adelete_ref_doc(self, ref_doc_id: str, delete_from_docstore: bool = False,
                              **delete_kwargs: Any) -> None:
        """Async :meth:`delete_ref_doc` (runs in a worker thread)."""
        await asyncio.to_thread(self.delete_ref_doc, ref_doc_id, delete_from_docstore)

    @property
    def ref_doc_info(self) -> dict[str, RefDocInfo]:
        """Every document in the memory with its chunks' node ids (the ids ``source_nodes`` use) and metadata."""
        return {info.doc_id: RefDocInfo(node_ids=[chunk_node_id(info.doc_id, i) for i in range(info.n_chunks)],
                                        metadata=dict(info.metadata))
                for info in self._memory.list()}

    # ------------------------------------------------------------------ queries
    def as_retriever(self, **kwargs: Any) -> BaseRetriever:
        """Not available: the memory holds adapters, not retrievable text.

        Raises:
            NotImplementedError: always, with what to use instead.
        """
        raise NotImplementedError(NO_RETRIEVAL)

    def as_query_engine(self, llm: Any = None, streaming: bool = False, task: str | None = None,
                        **generation: Any) -> LoRAMemoryQueryEngine:
        """A query engine answering through the memory's adapter.

        Args:
            llm: must be None: answers come from the memory's base model, the only
                model its adapters fit.
            streaming: return streaming responses.
            task: optional Text-to-LoRA task description.
            **generation: ``max_new_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``.

        Raises:
            ValueError: ``llm`` is given.
            TypeError: an unknown keyword (such as ``similarity_top_k``) is given.
        """
        if llm is not None:
            raise ValueError("LoRAMemoryIndex answers with its memory's base model (the adapters fit only that "
                             "model); configure it with MemoryConfig(base_model=...) instead of llm=")
        return LoRAMemoryQueryEngine(self._memory, streaming=streaming, task=task,
                                     callback_manager=self._callback_manager, **generation)

    def as_chat_engine(self, chat_mode: ChatMode = ChatMode.BEST, llm: LLM | None = None,
                       **kwargs: Any) -> BaseChatEngine:
        """A chat engine over the memory.

        ``ChatMode.BEST`` and ``ChatMode.SIMPLE`` chat with :class:`LoRAMemoryLLM`
        (the adapter is the context; the history is in the prompt).
        ``ChatMode.CONDENSE_QUESTION`` condenses each turn into a standalone
        question with ``llm`` (default: the memory LLM) and answers it with
        :meth:`as_query_engine`, so responses carry ``source_nodes``. The
        retrieval-based modes need text to retrieve and are refused.

        Args:
            chat_mode: see above.
            llm: for BEST/SIMPLE a configured :class:`LoRAMemoryLLM` of this
                memory; for CONDENSE_QUESTION any LLM to condense questions with.
            **kwargs: passed to the chat engine's ``from_defaults`` (``memory``,
                ``system_prompt``, ``chat_history``...).

        Raises:
            ValueError: a retrieval-based or removed mode, or for BEST/SIMPLE an
                ``llm`` that would answer without this memory.
        """
        memory_llm = LoRAMemoryLLM.from_memory(self._memory, callback_manager=self._callback_manager)
        if chat_mode in (ChatMode.BEST, ChatMode.SIMPLE):
            if llm is not None and not (isinstance(llm, LoRAMemoryLLM) and llm.memory is self._memory):
                raise ValueError(f"chat mode {chat_mode.value!r} answers with this memory's LoRAMemoryLLM; "
                                 "another llm would answer without the memory")
            return SimpleChatEngine.from_defaults(llm=llm or memory_llm, **kwargs)
        if chat_mode == ChatMode.CONDENSE_QUESTION:
            return CondenseQuestionChatEngine.from_defaults(query_engine=self.as_query_engine(),
                                                            llm=llm or memory_llm, **kwargs)
        raise ValueError(f"chat mode {chat_mode.value!r} is not available on LoRAMemoryIndex: {NO_RETRIEVAL} "
                         f"Supported modes: best, simple, condense_question.")


"""A query engine that answers through a memory's adapters, not through retrieved context.

The question goes to the base model with the collection's LoRA adapter applied and
no document text in the prompt. Provenance (which chunks the adapter was composed
from) comes back as ``source_nodes``, as a LlamaIndex user expects from any query
engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.response.schema import RESPONSE_TYPE, AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.callbacks.base import CallbackManager
from llama_index.core.prompts.mixin import PromptMixinType
from llama_index.core.schema import QueryBundle

from lora_memory.aio import iterate_in_thread

from ._utils import answer_metadata, check_generation_keys, source_to_node

if TYPE_CHECKING:
    from lora_memory import Answer, LoRAMemory


class LoRAMemoryQueryEngine(BaseQueryEngine):
    """Answers queries with a lora-memory collection's adapter applied to its base model.

    Args:
        memory: the open ``lora_memory.LoRAMemory`` to answer from.
        streaming: return a ``StreamingResponse`` (``AsyncStreamingResponse`` from
            ``aquery``) whose text arrives piece by piece.
        task: optional task description for a Text-to-LoRA adapter composed with
            the documents' adapter.
        callback_manager: LlamaIndex callbacks.
        **generation: per-engine overrides of the memory's decoding defaults:
            ``max_new_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``.

    Raises:
        TypeError: an argument is not one of the above (for example a retrieval
            setting such as ``similarity_top_k``; routing is ``MemoryConfig.top_k``).

    Example:
        >>> engine = LoRAMemoryQueryEngine(memory, max_new_tokens=32)  # doctest: +SKIP
        >>> response = engine.query("When was the bridge painted?")  # doctest: +SKIP
        >>> response.source_nodes[0].node.ref_doc_id  # doctest: +SKIP
        'bridge'
    """

    def __init__(self, memory: LoRAMemory, *, streaming: bool = False, task: str | None = None,
                 callback_manager: CallbackManager | None = None, **generation: Any) -> None:
        self._memory = memory
        self._streaming = streaming
        self._task = task
        self._generation = check_generation_keys(generation)
        super().__init__(callback_manager=callback_manager)

    def _get_prompt_modules(self) -> PromptMixinType:
        return {}  # no prompt templates: the question is sent as it is, with no retrieved context

    @property
    def memory(self) -> LoRAMemory:
        """The memory this engine answers from."""
        return self._memory

    def _response(self, answer: Answer) -> Response:
        return Response(response=answer.text, source_nodes=[source_to_node(s) for s in answer.sources],
                        metadata=answer_metadata(answer))

    def _start_stream(self, question: str) -> tuple[Iterator[str], list, dict[str, Any]]:
        """Start generating; the metadata dict is filled in once the pieces are exhausted."""
        pieces, answer = self._memory.ask_stream(question, task=self._task, **self._generation)
        metadata: dict[str, Any] = {}

        def tracked() -> Iterator[str]:
            yield from pieces
            metadata.update(answer_metadata(answer))

        return tracked(), [source_to_node(s) for s in answer.sources], metadata

    def _query(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        if self._streaming:
            pieces, nodes, metadata = self._start_stream(query_bundle.query_str)
            return StreamingResponse(response_gen=pieces, source_nodes=nodes, metadata=metadata)
        return self._response(self._memory.ask(query_bundle.query_str, task=self._task, **self._generation))

    async def _aquery(self, query_bundle: QueryBundle) -> RESPONSE_TYPE:
        if self._streaming:
            pieces, nodes, metadata = await asyncio.to_thread(self._start_stream, query_bundle.query_str)
            return AsyncStreamingResponse(response_gen=iterate_in_thread(pieces), source_nodes=nodes,
                                          metadata=metadata)
        return self._response(await self._memory.aask(query_bundle.query_str, task=self._task, **self._generation))

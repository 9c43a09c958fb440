"""``ChatLoRAMemory``: a LangChain chat model that knows a collection's documents through LoRA adapters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

from lora_memory.aio import iterate_in_thread

from ._utils import PROVIDER, MemoryBackedModel, answer_metadata, to_chat_dicts, usage_metadata

if TYPE_CHECKING:
    from lora_memory import Answer


class ChatLoRAMemory(MemoryBackedModel, BaseChatModel):
    """Chat model answering with a lora-memory collection's adapter applied to its base model.

    The documents are internalized once (a hypernetwork turns each chunk into a
    LoRA adapter); every call runs the base model with their composed adapter and
    no document text in the prompt. ``response_metadata["sources"]`` lists the
    chunks the adapter was composed from; ``usage_metadata`` counts the prompt and
    answer tokens.

    Not supported: tool calling, structured output, JSON mode, and non-text
    inputs (the base model is a small text-only chat model).

    Example:
        >>> from langchain_lora_memory import ChatLoRAMemory
        >>> chat = ChatLoRAMemory.from_documents(docs, collection="notes", max_tokens=32)  # doctest: +SKIP
        >>> chat.invoke("Who founded the chess club?").content  # doctest: +SKIP
    """

    streaming: bool = Field(default=False, description="Make invoke() stream internally (callbacks get tokens).")

    @property
    def _llm_type(self) -> str:
        return "lora-memory-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider=PROVIDER, ls_model_type="chat",
                                 ls_model_name=kwargs.get("model", self.model_name))
        if (temperature := kwargs.get("temperature", self.temperature)) is not None:
            params["ls_temperature"] = temperature
        if (max_tokens := kwargs.get("max_tokens", self.max_tokens)) is not None:
            params["ls_max_tokens"] = max_tokens
        if stop := (stop if stop is not None else self.stop):
            params["ls_stop"] = stop
        return params

    def _result(self, answer: Answer) -> ChatResult:
        message = AIMessage(content=answer.text, usage_metadata=usage_metadata(answer),
                            response_metadata=answer_metadata(answer, self.model_name))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _last_chunk(self, answer: Answer) -> ChatGenerationChunk:
        """The closing chunk: usage and metadata once, after the text."""
        return ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=usage_metadata(answer),
            response_metadata=answer_metadata(answer, self.model_name), chunk_position="last"))

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return self._result(self.memory.ask(to_chat_dicts(messages), **self._memory_settings(stop, kwargs)))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return self._result(await self.memory.aask(to_chat_dicts(messages), **self._memory_settings(stop, kwargs)))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        pieces, answer = self.memory.ask_stream(to_chat_dicts(messages), **self._memory_settings(stop, kwargs))
        for piece in pieces:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield self._last_chunk(answer)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        pieces, answer = await asyncio.to_thread(self.memory.ask_stream, to_chat_dicts(messages),
                                                 **self._memory_settings(stop, kwargs))
        async for piece in iterate_in_thread(pieces):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        yield self._last_chunk(answer)

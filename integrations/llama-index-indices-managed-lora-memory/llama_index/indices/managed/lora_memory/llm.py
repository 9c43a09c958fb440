"""A LlamaIndex LLM whose knowledge of a collection lives in LoRA adapters.

Every call runs the memory's base model with the collection's adapter applied;
prompts never carry the documents, so the whole context window is left for the
conversation. Use it wherever LlamaIndex takes an LLM (``Settings.llm``, a
``SimpleChatEngine``, an agent's tool).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.generic_utils import (
    astream_completion_response_to_chat_response,
    completion_response_to_chat_response,
    stream_completion_response_to_chat_response,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from ._utils import to_chat_dicts

if TYPE_CHECKING:
    from lora_memory import Answer, LoRAMemory, MemoryConfig

Question = str | list[dict[str, str]]


class LoRAMemoryLLM(CustomLLM):
    """Answers prompts and chats with a lora-memory collection's adapter applied.

    Build it with :meth:`from_memory` (an open memory) or :meth:`from_config`
    (opens a named collection).

    Example:
        >>> llm = LoRAMemoryLLM.from_config(collection="notes", max_new_tokens=32)  # doctest: +SKIP
        >>> llm.complete("Who founded the chess club?").text  # doctest: +SKIP
    """

    collection: str = Field(description="Name of the lora-memory collection the answers come from.")
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens per answer; None uses the memory's generation default.")
    temperature: float | None = Field(
        default=None, ge=0.0, description="Sampling temperature (0 is greedy); None uses the memory's default.")
    task: str | None = Field(
        default=None, description="Optional task description for a Text-to-LoRA adapter composed with the "
                                  "documents' adapter.")

    _memory: LoRAMemory = PrivateAttr()

    def __init__(self, memory: LoRAMemory, **kwargs: Any) -> None:
        super().__init__(collection=memory.name, **kwargs)
        self._memory = memory

    @classmethod
    def from_memory(cls, memory: LoRAMemory, **kwargs: Any) -> LoRAMemoryLLM:
        """Wrap an open memory; ``kwargs`` set the fields (``max_new_tokens``, ``temperature``, ``task``...)."""
        return cls(memory, **kwargs)

    @classmethod
    def from_config(cls, config: MemoryConfig | None = None, *, collection: str = "default",
                    directory: str | Path | None = None, **kwargs: Any) -> LoRAMemoryLLM:
        """Open (or create) the collection ``collection`` with ``config`` and wrap it.

        Raises:
            lora_memory.errors.LoRAMemoryError: the collection or its models cannot be opened.
        """
        from lora_memory import LoRAMemory

        return cls(LoRAMemory.open(name=collection, directory=directory, config=config), **kwargs)

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's serialisation name for this LLM."""
        return "LoRAMemoryLLM"

    @property
    def memory(self) -> LoRAMemory:
        """The memory this LLM answers from."""
        return self._memory

    @property
    def metadata(self) -> LLMMetadata:
        """The base model's window (documents take none of it), this LLM's output budget, chat formatting."""
        defaults = self._memory.config.generation
        return LLMMetadata(
            context_window=self._memory.base.model.config.max_position_embeddings,
            num_output=self.max_new_tokens or defaults.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=self._memory.base.name,
        )

    # ---------------------------------------------------------------- helpers
    def _settings(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """This LLM's fields overridden by the generation settings among a call's kwargs.

        LlamaIndex passes other keyword arguments (``formatted``, tool lists...) to
        every LLM; those say nothing about decoding here and are not forwarded.
        """
        from lora_memory.generation import GENERATION_FIELDS

        settings = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                    **{key: value for key, value in kwargs.items() if key in GENERATION_FIELDS}}
        return {"task": self.task, **{key: value for key, value in settings.items() if value is not None}}

    @staticmethod
    def _completion(answer: Answer) -> CompletionResponse:
        return CompletionResponse(text=answer.text, raw=answer.model_dump())

    def _ask(self, question: Question, kwargs: dict[str, Any]) -> CompletionResponse:
        return self._completion(self._memory.ask(question, **self._settings(kwargs)))

    async def _aask(self, question: Question, kwargs: dict[str, Any]) -> CompletionResponse:
        return self._completion(await self._memory.aask(question, **self._settings(kwargs)))

    def _stream(self, question: Question, kwargs: dict[str, Any]) -> CompletionResponseGen:
        pieces = self._memory.stream(question, **self._settings(kwargs))

        def gen() -> Iterator[CompletionResponse]:
            text = ""
            for delta in pieces:
                text += delta
                yield CompletionResponse(text=text, delta=delta)

        return gen()

    def _astream(self, question: Question, kwargs: dict[str, Any]) -> CompletionResponseAsyncGen:
        pieces = self._memory.astream(question, **self._settings(kwargs))

        async def gen() -> AsyncIterator[CompletionResponse]:
            text = ""
            async for delta in pieces:
                text += delta
                yield CompletionResponse(text=text, delta=delta)

        return gen()

    # ------------------------------------------------------------- completion
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer ``prompt`` (sent as one user turn through the base model's chat template)."""
        return self._ask(prompt, kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """Like :meth:`complete`, yielding the growing text with each new ``delta``."""
        return self._stream(prompt, kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Async :meth:`complete`."""
        return await self._aask(prompt, kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        """Async :meth:`stream_complete`."""
        return self._astream(prompt, kwargs)

    # ------------------------------------------------------------------- chat
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a conversation, keeping its roles (the chat template formats them)."""
        return completion_response_to_chat_response(self._ask(to_chat_dicts(messages), kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Stream the answer to a chat history, piece by piece."""
        return stream_completion_response_to_chat_response(self._stream(to_chat_dicts(messages), kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Async :meth:`chat`."""
        return completion_response_to_chat_response(await self._aask(to_chat_dicts(messages), kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """Async :meth:`stream_chat`."""
        return astream_completion_response_to_chat_response(self._astream(to_chat_dicts(messages), kwargs))

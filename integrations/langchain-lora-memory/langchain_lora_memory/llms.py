"""``LoRAMemoryLLM``: the text-completion (``LLM``) face of a lora-memory collection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LLM
from langchain_core.outputs import GenerationChunk

from ._utils import MemoryBackedModel


class LoRAMemoryLLM(MemoryBackedModel, LLM):
    """Completes prompts with a lora-memory collection's adapter applied to its base model.

    The prompt is sent as one user turn through the base model's chat template;
    the documents are in the adapter, never in the prompt. Prefer
    :class:`~langchain_lora_memory.ChatLoRAMemory` when you want token counts
    and provenance in the response.

    Example:
        >>> llm = LoRAMemoryLLM(collection="notes", max_tokens=32)  # doctest: +SKIP
        >>> llm.invoke("Who founded the chess club?")  # doctest: +SKIP
    """

    @property
    def _llm_type(self) -> str:
        return "lora-memory"

    def _call(self, prompt: str, stop: list[str] | None = None,
              run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return self.memory.ask(prompt, **self._memory_settings(stop, kwargs)).text

    async def _acall(self, prompt: str, stop: list[str] | None = None,
                     run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> str:
        return (await self.memory.aask(prompt, **self._memory_settings(stop, kwargs))).text

    def _stream(self, prompt: str, stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[GenerationChunk]:
        for piece in self.memory.stream(prompt, **self._memory_settings(stop, kwargs)):
            chunk = GenerationChunk(text=piece)
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk

    async def _astream(self, prompt: str, stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[GenerationChunk]:
        async for piece in self.memory.astream(prompt, **self._memory_settings(stop, kwargs)):
            chunk = GenerationChunk(text=piece)
            if run_manager:
                await run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk

"""What the chat model and the LLM share: the memory handle, generation settings, and translations (private)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from langchain_core.documents import Document
from langchain_core.messages import BaseMessage, ChatMessage
from langchain_core.messages.ai import UsageMetadata
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .documents import add_documents

if TYPE_CHECKING:
    from lora_memory import Answer, LoRAMemory, MemoryConfig

PROVIDER = "lora_memory"
#: LangChain's names for generation settings that lora-memory names otherwise.
_LANGCHAIN_NAMES = {"max_new_tokens": "max_tokens"}


def call_settings() -> dict[str, str]:
    """Per-call keyword arguments a call may carry, and the memory setting each one sets.

    Every field of ``lora_memory.GenerationConfig`` except ``stop``, which LangChain passes on its own.
    """
    from lora_memory.generation import GENERATION_FIELDS

    return {_LANGCHAIN_NAMES.get(name, name): name for name in sorted(GENERATION_FIELDS - {"stop"})}
_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}


def open_memory(collection: str, directory: str | Path | None = None,
                config: MemoryConfig | None = None) -> LoRAMemory:
    """Open (or create) a named collection; lora-memory (and torch) are imported only now."""
    from lora_memory import LoRAMemory

    return LoRAMemory.open(name=collection, directory=directory, config=config)


class MemoryBackedModel(BaseModel):
    """Fields and helpers of a LangChain model that answers from a lora-memory collection."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    memory: Any = Field(default=None, exclude=True,
                        description="An open lora_memory.LoRAMemory; None opens `collection` on construction.")
    collection: str | None = Field(default=None, description="Collection to open when `memory` is None "
                                                             "('default' if unset).")
    directory: Path | None = Field(default=None, description="Where that collection lives (default: the "
                                                             "lora-memory home).")
    model_name: str | None = Field(default=None, alias="model",
                                   description="The memory's base model (filled in from the memory).")
    temperature: float | None = Field(default=None, ge=0.0, description="Sampling temperature; 0 is greedy; "
                                                                         "None uses the memory's default.")
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens per answer; None uses the "
                                                                   "memory's default.")
    stop: list[str] | None = Field(default=None, description="Generation ends before the first of these strings.")
    task: str | None = Field(default=None, description="Optional Text-to-LoRA task description composed with "
                                                        "the documents' adapter.")

    @model_validator(mode="after")
    def _bind_memory(self) -> Self:
        if self.memory is None:
            self.memory = open_memory(self.collection or "default", self.directory)
        elif self.collection is not None and self.collection != self.memory.name:
            raise ValueError(f"collection={self.collection!r} but the memory given is {self.memory.name!r}")
        base_name = self.memory.base.name
        if self.model_name is not None and self.model_name != base_name:
            raise ValueError(f"model={self.model_name!r} but this memory's base model is {base_name!r}; "
                             "choose it with MemoryConfig(base_model=...)")
        self.collection, self.model_name = self.memory.name, base_name
        return self

    @classmethod
    def from_documents(cls, documents: Iterable[Document], *, collection: str = "default",
                       directory: str | Path | None = None, config: MemoryConfig | None = None,
                       **kwargs: Any) -> Self:
        """Open a collection, internalize ``documents`` into it, and return a model answering from it.

        The LangChain counterpart of ``VectorStore.from_documents`` for the swap
        from a retrieval chain: the documents go into adapters, not into prompts.

        Raises:
            lora_memory.errors.LoRAMemoryError: the memory cannot be opened or a document is empty.
        """
        memory = open_memory(collection, directory, config)
        add_documents(memory, documents)
        return cls(memory=memory, **kwargs)

    def _memory_settings(self, stop: list[str] | None, call_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for ``memory.ask``: this model's fields, overridden per call.

        Raises:
            TypeError: a per-call keyword is not a generation setting.
        """
        names = call_settings()
        unknown = set(call_kwargs) - set(names)
        if unknown:
            raise TypeError(f"unsupported call argument(s) {sorted(unknown)}; supported: "
                            f"{sorted(names)} and stop")
        values = {"max_tokens": self.max_tokens, "temperature": self.temperature, **call_kwargs}
        settings = {names[key]: value for key, value in values.items() if value is not None}
        stop = stop if stop is not None else self.stop
        if stop:
            settings["stop"] = list(stop)
        return {"task": self.task, **settings}

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "collection": self.collection, "temperature": self.temperature,
                "max_tokens": self.max_tokens, "stop": self.stop, "task": self.task}


def message_text(message: BaseMessage) -> str:
    """The text of a message whose content is a string or a list of text blocks.

    Raises:
        ValueError: the content holds a non-text block (images, audio, files...).
    """
    if isinstance(message.content, str):
        return message.content
    parts = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif block.get("type") == "text":
            parts.append(block["text"])
        else:
            raise ValueError(f"lora-memory answers text only; got a {block.get('type')!r} content block")
    return "".join(parts)


def to_chat_dicts(messages: Iterable[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the ``{"role", "content"}`` dicts the base model's chat template takes."""
    return [{"role": m.role if isinstance(m, ChatMessage) else _ROLES.get(m.type, m.type),
             "content": message_text(m)} for m in messages]


def usage_metadata(answer: Answer) -> UsageMetadata:
    """Token counts of an answer in LangChain's format."""
    return UsageMetadata(input_tokens=answer.prompt_tokens, output_tokens=answer.completion_tokens,
                         total_tokens=answer.prompt_tokens + answer.completion_tokens)


def answer_metadata(answer: Answer, model_name: str) -> dict[str, Any]:
    """Response metadata: the model, the applied chunks (provenance), the adapter's rank and timings."""
    return {"model_name": model_name, "model_provider": PROVIDER,
            "sources": [source.model_dump() for source in answer.sources],
            "adapter_rank": answer.adapter_rank, "timings": dict(answer.timings)}

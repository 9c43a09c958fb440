"""``create_memory_tool``: a lora-memory collection as a tool an agent can ask questions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from lora_memory import Answer, LoRAMemory


class MemoryQuestion(BaseModel):
    """The tool's input."""

    query: str = Field(description="A standalone question about the documents in this memory.")


def create_memory_tool(memory: LoRAMemory, name: str, description: str, *, task: str | None = None,
                       max_tokens: int | None = None) -> BaseTool:
    """Wrap a memory as a tool: the agent sends a question, the memory answers it through its adapter.

    The counterpart of ``create_retriever_tool``: instead of returning retrieved
    passages for the agent's LLM to read, the tool returns the memory's answer.
    The tool's content is the answer text; its artifact (``ToolMessage.artifact``)
    is the list of applied chunks (``doc_id``, ``chunk_index``, ``metadata``,
    ``snippet``, ``score``, ``relevance``) for provenance.

    Args:
        memory: an open ``lora_memory.LoRAMemory``.
        name: the tool's name, as the agent sees it.
        description: when the agent should use it (what the documents are about).
        task: optional Text-to-LoRA task description for the answers.
        max_tokens: most tokens per answer (None: the memory's default).

    Example:
        >>> tool = create_memory_tool(memory, "city_notes", "Facts about Quenford.")  # doctest: +SKIP
        >>> tool.invoke({"query": "When was the bridge painted?"})  # doctest: +SKIP
    """
    settings: dict[str, Any] = {"task": task}
    if max_tokens is not None:
        settings["max_new_tokens"] = max_tokens

    def _reply(answer: Answer) -> tuple[str, list[dict[str, Any]]]:
        return answer.text, [source.model_dump() for source in answer.sources]

    def ask(query: str) -> tuple[str, list[dict[str, Any]]]:
        return _reply(memory.ask(query, **settings))

    async def aask(query: str) -> tuple[str, list[dict[str, Any]]]:
        return _reply(await memory.aask(query, **settings))

    return StructuredTool.from_function(func=ask, coroutine=aask, name=name, description=description,
                                        args_schema=MemoryQuestion, response_format="content_and_artifact")

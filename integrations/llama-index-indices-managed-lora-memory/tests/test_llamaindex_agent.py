"""The memory's query engine as a QueryEngineTool, called by a ReActAgent (whose reasoning is scripted)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from llama_index.core.agent.workflow import ReActAgent
from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen, LLMMetadata
from llama_index.core.base.response.schema import Response
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms.callbacks import llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.schema import Document
from llama_index.core.tools import QueryEngineTool

from llama_index.indices.managed.lora_memory import LoRAMemoryIndex

QUESTION = "Who founded the Quenford chess club?"
SCRIPT = [
    f'Thought: I should ask the city notes.\nAction: city_notes\nAction Input: {{"input": "{QUESTION}"}}',
    "Thought: I can answer without using any more tools.\nAnswer: The notes say Mira Tesk.",
]


class ScriptedLLM(CustomLLM):
    """Plays the agent's reasoning from a fixed script and records the prompts it was shown."""

    _replies: Iterator[str] = PrivateAttr()
    _prompts: list[str] = PrivateAttr(default_factory=list)

    def __init__(self, replies: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._replies = iter(replies)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="scripted")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self._prompts.append(prompt)
        return CompletionResponse(text=next(self._replies))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self.complete(prompt).text
        yield CompletionResponse(text=text, delta=text)


def _tool(fake_memory) -> QueryEngineTool:
    index = LoRAMemoryIndex.from_documents([Document(text="Mira Tesk founded the chess club.", id_="club")],
                                           memory=fake_memory)
    return QueryEngineTool.from_defaults(query_engine=index.as_query_engine(), name="city_notes",
                                         description="Facts about the city of Quenford.")


def test_query_engine_tool_answers_with_sources(fake_memory):
    output = _tool(fake_memory).call(QUESTION)
    assert output.content == f"1 chunks say: {QUESTION}"
    assert isinstance(output.raw_output, Response)
    assert output.raw_output.source_nodes[0].node.ref_doc_id == "club"


def test_react_agent_calls_the_memory_tool(fake_memory):
    llm = ScriptedLLM(SCRIPT)
    agent = ReActAgent(tools=[_tool(fake_memory)], llm=llm)

    async def run():
        return await agent.run(user_msg=QUESTION)

    result = asyncio.run(run())
    assert [(c[0], c[1]) for c in fake_memory.calls] == [("aask", QUESTION)]  # the agent calls tools asynchronously
    assert f"Observation: 1 chunks say: {QUESTION}" in llm._prompts[1]  # the tool's answer reached the agent
    assert str(result.response.content) == "The notes say Mira Tesk."

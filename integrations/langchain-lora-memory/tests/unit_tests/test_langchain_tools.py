"""create_memory_tool on the fake memory: the answer as content, the applied chunks as artifact."""

from __future__ import annotations

import pytest
from langchain_core.messages import ToolMessage

from langchain_lora_memory import create_memory_tool


@pytest.fixture
def tool(fake_memory):
    fake_memory.add_documents([("Mira Tesk founded the chess club.", "club", {"topic": "people"})])
    return create_memory_tool(fake_memory, "city_notes", "Facts about Quenford.", task="be brief", max_tokens=5)


def test_tool_describes_itself(tool):
    assert (tool.name, tool.description) == ("city_notes", "Facts about Quenford.")
    assert list(tool.args) == ["query"]


def test_invoke_returns_the_answer_text(tool, fake_memory):
    assert tool.invoke({"query": "Who founded the club?"}) == "1 chunks say: Who founded"
    _, question, settings = fake_memory.calls[-1]
    assert (question, settings["task"], settings["max_new_tokens"]) == ("Who founded the club?", "be brief", 5)


def test_tool_call_returns_sources_as_artifact(tool):
    message = tool.invoke({"type": "tool_call", "id": "call-1", "name": "city_notes",
                           "args": {"query": "Who founded the club?"}})
    assert isinstance(message, ToolMessage)
    assert message.tool_call_id == "call-1"
    assert message.content == "1 chunks say: Who founded"
    assert message.artifact == [{"doc_id": "club", "chunk_index": 0, "metadata": {"topic": "people"},
                                 "snippet": "Mira Tesk founded the chess club.", "score": None, "relevance": None}]


async def test_async_invoke_uses_the_async_api(tool, fake_memory):
    assert await tool.ainvoke({"query": "Who?"}) == "1 chunks say: Who?"
    assert fake_memory.calls[-1][0] == "aask"


def test_missing_query_is_a_validation_error(tool, fake_memory):
    with pytest.raises(ValueError, match="query"):
        tool.invoke({"question": "Who?"})
    assert fake_memory.calls == []

"""LoRAMemoryQueryEngine on the fake memory: answers, provenance as source_nodes, streaming, async."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse

from llama_index.indices.managed.lora_memory import LoRAMemoryQueryEngine


@pytest.fixture
def memory(fake_memory):
    fake_memory.add_documents([("The Zorblat bridge was painted teal in 1987.", "bridge", {"topic": "city"}),
                               ("Mira Tesk founded the chess club.", "club", {})])
    return fake_memory


def test_query_answers_with_provenance(memory):
    response = LoRAMemoryQueryEngine(memory).query("When was the bridge painted?")
    assert isinstance(response, Response)
    assert response.response == "3 chunks say: When was the bridge painted?"
    nodes = response.source_nodes
    assert [n.node.node_id for n in nodes] == ["bridge#chunk-0", "bridge#chunk-1", "club#chunk-0"]
    assert [n.node.ref_doc_id for n in nodes] == ["bridge", "bridge", "club"]
    assert nodes[0].node.get_content() == "The Zorblat bridge was painted teal"
    assert nodes[0].node.metadata == {"topic": "city"}
    assert nodes[0].score is None
    assert response.metadata == {"adapter_rank": 24, "timings": {"compose": 0.0, "generate": 0.0, "total": 0.0},
                                 "prompt_tokens": 5, "completion_tokens": 8}


def test_generation_settings_and_task_reach_the_memory(memory):
    engine = LoRAMemoryQueryEngine(memory, task="answer tersely", max_new_tokens=3, stop=["say"], temperature=0.5)
    assert engine.query("When?").response == "3 chunks "
    _, question, settings = memory.calls[-1]
    assert question == "When?"
    assert (settings["max_new_tokens"], settings["stop"], settings["temperature"], settings["task"]) == (
        3, ["say"], 0.5, "answer tersely")


def test_unknown_settings_are_refused(memory):
    with pytest.raises(TypeError, match="similarity_top_k"):
        LoRAMemoryQueryEngine(memory, similarity_top_k=2)


def test_streaming_yields_the_answer_with_sources_up_front(memory):
    response = LoRAMemoryQueryEngine(memory, streaming=True).query("Who founded the club?")
    assert isinstance(response, StreamingResponse)
    assert {n.node.ref_doc_id for n in response.source_nodes} == {"bridge", "club"}
    assert response.metadata == {}  # counts arrive with the last piece
    pieces = list(response.response_gen)
    assert len(pieces) > 1
    assert "".join(pieces) == memory.ask("Who founded the club?").text
    assert response.metadata["completion_tokens"] == 7


def test_aquery_answers_like_query(memory):
    engine = LoRAMemoryQueryEngine(memory)
    response = asyncio.run(engine.aquery("Who founded the club?"))
    assert response.response == engine.query("Who founded the club?").response
    assert memory.calls[0][0] == "aask"
    assert len(response.source_nodes) == 3


def test_async_streaming_yields_the_same_text(memory):
    async def consume():
        response = await LoRAMemoryQueryEngine(memory, streaming=True).aquery("Who founded the club?")
        assert isinstance(response, AsyncStreamingResponse)
        assert len(response.source_nodes) == 3
        return [piece async for piece in response.async_response_gen()], response.metadata

    pieces, metadata = asyncio.run(consume())
    assert "".join(pieces) == "3 chunks say: Who founded the club?"
    assert metadata["completion_tokens"] == 7


def test_empty_memory_answers_with_no_sources(fake_memory):
    response = LoRAMemoryQueryEngine(fake_memory).query("Anything?")
    assert response.source_nodes == []
    assert response.response == "0 chunks say: Anything?"

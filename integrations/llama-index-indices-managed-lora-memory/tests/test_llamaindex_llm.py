"""LoRAMemoryLLM on the fake memory: metadata, completion, chat, streaming, async, settings."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from pydantic import ValidationError

from llama_index.indices.managed.lora_memory import LoRAMemoryLLM


@pytest.fixture
def memory(fake_memory):
    fake_memory.add_documents([("Mira Tesk founded the chess club.", "club", {})])
    return fake_memory


def test_metadata_describes_the_base_model(memory):
    meta = LoRAMemoryLLM.from_memory(memory).metadata
    assert meta.context_window == 2048  # the fake base model's max_position_embeddings
    assert meta.num_output == memory.config.generation.max_new_tokens
    assert meta.model_name == "fake-base"
    assert meta.is_chat_model and not meta.is_function_calling_model
    assert LoRAMemoryLLM.from_memory(memory, max_new_tokens=7).metadata.num_output == 7


def test_fields_are_validated_and_name_the_collection(memory):
    llm = LoRAMemoryLLM.from_memory(memory, temperature=0.2)
    assert llm.collection == memory.name
    assert llm.memory is memory
    assert LoRAMemoryLLM.class_name() == "LoRAMemoryLLM"
    with pytest.raises(ValidationError, match="max_new_tokens"):
        LoRAMemoryLLM.from_memory(memory, max_new_tokens=0)


def test_complete_answers_through_the_memory(memory):
    response = LoRAMemoryLLM.from_memory(memory, temperature=0.3, task="be brief").complete("Who?", formatted=True)
    assert response.text == "1 chunks say: Who?"
    assert response.raw["sources"][0]["doc_id"] == "club"
    method, question, settings = memory.calls[-1]
    assert (method, question, settings["temperature"], settings["task"]) == ("ask", "Who?", 0.3, "be brief")


def test_call_settings_override_fields_and_other_kwargs_are_not_forwarded(memory):
    llm = LoRAMemoryLLM.from_memory(memory, max_new_tokens=2)
    assert llm.complete("Who founded it?", stop=["chunks"], tools=[]).text == "1 "
    assert llm.complete("Who founded it?", max_new_tokens=4).text == "1 chunks say: Who"
    assert "tools" not in memory.calls[-1][2]


def test_stream_complete_accumulates_text_and_deltas(memory):
    responses = list(LoRAMemoryLLM.from_memory(memory).stream_complete("Who founded the club?"))
    assert "".join(r.delta for r in responses) == responses[-1].text == "1 chunks say: Who founded the club?"
    assert responses[1].text == responses[0].delta + responses[1].delta


def test_chat_keeps_roles(memory):
    messages = [ChatMessage(role=MessageRole.DEVELOPER, content="Be brief."),
                ChatMessage(role=MessageRole.USER, content="Hi"),
                ChatMessage(role=MessageRole.CHATBOT, content="Hello"),
                ChatMessage(role=MessageRole.USER, content="Who founded the club?")]
    response = LoRAMemoryLLM.from_memory(memory).chat(messages)
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == "1 chunks say: Who founded the club?"
    assert memory.calls[-1][1] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                   {"role": "assistant", "content": "Hello"},
                                   {"role": "user", "content": "Who founded the club?"}]


def test_stream_chat_ends_with_the_full_message(memory):
    chunks = list(LoRAMemoryLLM.from_memory(memory).stream_chat([ChatMessage(role="user", content="Who?")]))
    assert chunks[-1].message.content == "1 chunks say: Who?"
    assert "".join(c.delta for c in chunks) == chunks[-1].message.content


def test_non_text_messages_are_refused(memory):
    message = ChatMessage(role="user", blocks=[TextBlock(text="What is this?"), ImageBlock(url="http://x/y.png")])
    with pytest.raises(ValueError, match="text only"):
        LoRAMemoryLLM.from_memory(memory).chat([message])
    assert memory.calls == []


def test_async_methods_use_the_memory_async_api(memory):
    llm = LoRAMemoryLLM.from_memory(memory)

    async def run():
        completion = await llm.acomplete("Who?")
        chat = await llm.achat([ChatMessage(role="user", content="Who?")])
        streamed = [r.delta async for r in await llm.astream_complete("Who?")]
        chat_streamed = [r async for r in await llm.astream_chat([ChatMessage(role="user", content="Who?")])]
        return completion, chat, streamed, chat_streamed

    completion, chat, streamed, chat_streamed = asyncio.run(run())
    assert completion.text == chat.message.content == "".join(streamed) == chat_streamed[-1].message.content
    assert [c[0] for c in memory.calls] == ["aask", "aask", "astream", "astream"]

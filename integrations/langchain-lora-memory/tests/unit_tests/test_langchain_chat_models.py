"""ChatLoRAMemory on the fake memory: what reaches the memory, and what comes back to LangChain."""

from __future__ import annotations

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage

from langchain_lora_memory import ChatLoRAMemory


@pytest.fixture
def memory(fake_memory):
    fake_memory.add_documents([("Mira Tesk founded the Quenford chess club.", "club", {"topic": "people"})])
    return fake_memory


def test_invoke_returns_the_answer_with_usage_and_provenance(memory):
    message = ChatLoRAMemory(memory=memory).invoke("Who founded the club?")
    assert message.content == "2 chunks say: Who founded the club?"
    assert message.usage_metadata == {"input_tokens": 4, "output_tokens": 7, "total_tokens": 11}
    meta = message.response_metadata
    assert (meta["model_name"], meta["model_provider"], meta["adapter_rank"]) == ("fake-base", "lora_memory", 16)
    assert [(s["doc_id"], s["chunk_index"], s["metadata"]) for s in meta["sources"]] == [
        ("club", 0, {"topic": "people"}), ("club", 1, {"topic": "people"})]
    assert meta["sources"][0]["snippet"] == "Mira Tesk founded the Quenford chess"


def test_messages_keep_their_roles(memory):
    ChatLoRAMemory(memory=memory).invoke([
        SystemMessage("Be brief."), HumanMessage([{"type": "text", "text": "Hi "}, "there"]), AIMessage("Hello"),
        ChatMessage(role="user", content="Who founded the club?")])
    assert memory.calls[-1][1] == [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Hi there"},
                                   {"role": "assistant", "content": "Hello"},
                                   {"role": "user", "content": "Who founded the club?"}]


def test_non_text_content_is_refused(memory):
    image = HumanMessage([{"type": "text", "text": "What is this?"},
                          {"type": "image", "url": "https://example.com/cat.png"}])
    with pytest.raises(ValueError, match="text only"):
        ChatLoRAMemory(memory=memory).invoke([image])
    assert memory.calls == []


def test_fields_and_call_arguments_set_generation(memory):
    chat = ChatLoRAMemory(memory=memory, temperature=0.4, max_tokens=3, stop=["never"], task="be brief")
    assert chat.invoke("Who?").content == "2 chunks say:"
    settings = memory.calls[-1][2]
    assert (settings["temperature"], settings["max_new_tokens"], settings["stop"], settings["task"]) == (
        0.4, 3, ["never"], "be brief")
    assert chat.invoke("Who?", stop=["say"], max_tokens=5, seed=3).content == "2 chunks "
    settings = memory.calls[-1][2]
    assert (settings["stop"], settings["max_new_tokens"], settings["seed"]) == (["say"], 5, 3)


def test_unknown_call_arguments_are_refused(memory):
    with pytest.raises(TypeError, match="tools"):
        ChatLoRAMemory(memory=memory).invoke("Who?", tools=[])


def test_construction_checks_the_memory(memory):
    chat = ChatLoRAMemory(memory=memory)
    assert (chat.collection, chat.model_name) == (memory.name, "fake-base")
    assert ChatLoRAMemory(memory=memory, model="fake-base").model_name == "fake-base"
    with pytest.raises(ValueError, match="base model"):
        ChatLoRAMemory(memory=memory, model="gpt-5")
    with pytest.raises(ValueError, match="collection"):
        ChatLoRAMemory(memory=memory, collection="other")
    with pytest.raises(ValueError, match="max_tokens"):
        ChatLoRAMemory(memory=memory, max_tokens=0)


def test_tracing_params_name_the_provider_and_model(memory):
    chat = ChatLoRAMemory(memory=memory, temperature=0.0, max_tokens=5)
    assert chat._get_ls_params(stop=["x"]) == {"ls_provider": "lora_memory", "ls_model_type": "chat",
                                               "ls_model_name": "fake-base", "ls_temperature": 0.0,
                                               "ls_max_tokens": 5, "ls_stop": ["x"]}
    assert chat._llm_type == "lora-memory-chat"
    assert chat._identifying_params["collection"] == memory.name


def test_stream_yields_pieces_then_one_closing_chunk(memory):
    tokens = []

    class Collect(BaseCallbackHandler):
        def on_llm_new_token(self, token, **kwargs):
            tokens.append(token)

    chunks = list(ChatLoRAMemory(memory=memory).stream("Who founded it?", config={"callbacks": [Collect()]}))
    assert memory.calls[-1][0] == "ask_stream"
    assert "".join(c.content for c in chunks) == "2 chunks say: Who founded it?"
    assert "".join(tokens) == "2 chunks say: Who founded it?"
    assert [c.chunk_position for c in chunks].count("last") == 1 and chunks[-1].chunk_position == "last"
    assert [c.usage_metadata is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].usage_metadata["output_tokens"] == 6
    assert chunks[-1].response_metadata["sources"][0]["doc_id"] == "club"


def test_streaming_flag_makes_invoke_stream(memory):
    message = ChatLoRAMemory(memory=memory, streaming=True).invoke("Who?")
    assert memory.calls[-1][0] == "ask_stream"
    assert message.content == "2 chunks say: Who?"
    assert message.usage_metadata["total_tokens"] == 1 + 4


async def test_async_paths_use_the_async_api_and_agree(memory):
    chat = ChatLoRAMemory(memory=memory)
    message = await chat.ainvoke("Who?")
    chunks = [chunk async for chunk in chat.astream("Who?")]
    assert message.content == "".join(c.content for c in chunks) == "2 chunks say: Who?"
    assert chunks[-1].usage_metadata == message.usage_metadata
    assert [c[0] for c in memory.calls] == ["aask", "ask_stream"]


def test_without_a_memory_the_named_collection_is_opened(monkeypatch, fake_memory, tmp_path):
    from lora_memory import LoRAMemory

    opened = []

    def fake_open(cls, name, directory=None, config=None):
        opened.append((name, directory, config))
        return fake_memory

    monkeypatch.setattr(LoRAMemory, "open", classmethod(fake_open))
    chat = ChatLoRAMemory(collection="fake", directory=tmp_path)
    assert opened == [("fake", tmp_path, None)]
    assert chat.memory is fake_memory

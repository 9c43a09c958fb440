"""The LangChain wrappers on the real LoRAMemory (a tiny random llama with a random hypernetwork)."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from pydantic import ValidationError

import memory_support
from langchain_lora_memory import ChatLoRAMemory, LoRAMemoryLLM, add_documents, create_memory_tool
from lora_memory import GenerationConfig, MemoryConfig
from lora_memory.errors import DuplicateDocumentError, InvalidNameError

DOCS = [Document("The Zorblat bridge in Quenford was painted teal in 1987.", id="bridge", metadata={"topic": "city"}),
        Document("Mira Tesk founded the Quenford chess club.", id="club", metadata={"topic": "people"})]
QUESTION = "Who founded the chess club?"


def test_chat_model_answers_like_the_memory(tiny_memory):
    add_documents(tiny_memory, DOCS)
    chat = ChatLoRAMemory(memory=tiny_memory)
    message = chat.invoke(QUESTION)
    answer = tiny_memory.ask([{"role": "user", "content": QUESTION}])
    assert message.content == answer.text  # greedy: the same answer
    assert message.usage_metadata["input_tokens"] == answer.prompt_tokens
    assert {s["doc_id"] for s in message.response_metadata["sources"]} == {"bridge", "club"}
    streamed = list(chat.stream(QUESTION))
    assert "".join(c.content for c in streamed) == message.content
    assert streamed[-1].usage_metadata["input_tokens"] == answer.prompt_tokens


def test_llm_and_tool_answer_like_the_memory(tiny_memory):
    add_documents(tiny_memory, DOCS)
    expected = tiny_memory.ask(QUESTION).text
    assert LoRAMemoryLLM(memory=tiny_memory).invoke(QUESTION) == expected
    assert create_memory_tool(tiny_memory, "notes", "Quenford facts.").invoke({"query": QUESTION}) == expected


def test_prompt_chain_runs_through_the_memory(tiny_memory):
    add_documents(tiny_memory, DOCS)
    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{question}")])
    chain = prompt | ChatLoRAMemory(memory=tiny_memory) | StrOutputParser()
    expected = tiny_memory.ask([{"role": "system", "content": "Answer briefly."},
                                {"role": "user", "content": QUESTION}]).text
    assert chain.invoke({"question": QUESTION}) == expected


def test_from_documents_opens_and_fills_a_collection(tmp_path, tiny_memory):
    base_dir, hypernet_dir = memory_support.save_models(tiny_memory.base, tiny_memory.hypernet, tmp_path / "models")
    config = MemoryConfig(base_model=str(base_dir), hypernet=str(hypernet_dir), dtype="fp32", device="cpu",
                          cache_dir=tmp_path / "cache", generation=GenerationConfig(max_new_tokens=4))
    chat = ChatLoRAMemory.from_documents(DOCS, collection="notes", directory=tmp_path / "notes", config=config,
                                         max_tokens=3)
    assert [info.doc_id for info in chat.memory.list()] == ["bridge", "club"]
    assert chat.collection == "notes"
    assert chat.invoke(QUESTION).usage_metadata["output_tokens"] <= 3


def test_an_id_given_twice_is_refused_and_the_first_kept(tiny_memory):
    twice = [DOCS[0], Document("Another text under the same id.", id="bridge")]
    with pytest.raises(DuplicateDocumentError, match="'bridge' is given twice"):
        add_documents(tiny_memory, twice)
    [info] = tiny_memory.list()
    assert info.doc_id == "bridge" and info.metadata == {"topic": "city"}


@pytest.mark.parametrize("name", ["../../outside", "/abs/dir", "a/b"])
def test_a_collection_name_that_is_a_path_is_refused(name):
    with pytest.raises((InvalidNameError, ValidationError), match="collection names use letters"):
        ChatLoRAMemory(collection=name)

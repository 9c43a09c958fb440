"""LoRAMemoryIndex on the fake memory: ingestion, bookkeeping, deletion, and the engines it builds."""

from __future__ import annotations

import asyncio
import logging

import pytest
from llama_index.core.chat_engine import CondenseQuestionChatEngine, SimpleChatEngine
from llama_index.core.chat_engine.types import ChatMode
from llama_index.core.llms.mock import MockLLM
from llama_index.core.schema import Document, NodeRelationship, TextNode

from llama_index.indices.managed.lora_memory import LoRAMemoryIndex, LoRAMemoryLLM, LoRAMemoryQueryEngine

DOCS = [
    Document(text="The Zorblat bridge in Quenford was painted teal in 1987 by the city.", id_="bridge",
             metadata={"topic": "city"}),
    Document(text="Mira Tesk founded the Quenford chess club.", id_="club", metadata={"topic": "people"}),
]


@pytest.fixture
def index(fake_memory):
    return LoRAMemoryIndex.from_documents(DOCS, memory=fake_memory)


def test_from_documents_keeps_ids_texts_and_metadata(index, fake_memory):
    assert [info.doc_id for info in fake_memory.list()] == ["bridge", "club"]
    assert fake_memory.get("club").metadata == {"topic": "people"}
    assert fake_memory.get("bridge").n_chunks == 3  # 13 words in chunks of 6
    assert index.memory is fake_memory


def test_ref_doc_info_lists_chunk_node_ids_and_metadata(index):
    info = index.ref_doc_info
    assert set(info) == {"bridge", "club"}
    assert info["bridge"].node_ids == ["bridge#chunk-0", "bridge#chunk-1", "bridge#chunk-2"]
    assert info["club"].metadata == {"topic": "people"}


def test_from_documents_refuses_transformations_and_misplaced_settings(fake_memory):
    from llama_index.core.node_parser import SentenceSplitter

    with pytest.raises(ValueError, match="chunk_tokens"):
        LoRAMemoryIndex.from_documents(DOCS, memory=fake_memory, transformations=[SentenceSplitter()])
    with pytest.raises(ValueError, match="top_k"):
        LoRAMemoryIndex.from_documents(DOCS, memory=fake_memory, top_k=2)
    assert len(fake_memory) == 0  # refused before anything was stored


def test_insert_adds_and_replaces_by_id(index, fake_memory):
    index.insert(Document(text="Quenford has two rivers.", id_="rivers"))
    index.insert(Document(text="Mira Tesk left the chess club in 2001.", id_="club"))
    assert [info.doc_id for info in fake_memory.list()] == ["bridge", "club", "rivers"]
    assert fake_memory.get("club").n_tokens == 8
    assert fake_memory.get("club").metadata == {}


def test_insert_nodes_stores_each_node_with_its_parent(index, fake_memory):
    node = TextNode(text="A node split by the user.", id_="node-1")
    node.relationships = {NodeRelationship.SOURCE: DOCS[0].as_related_node_info()}
    index.insert_nodes([node])
    assert fake_memory.get("node-1").metadata == {"ref_doc_id": "bridge"}


def test_update_ref_doc_replaces_the_text(index, fake_memory):
    index.update_ref_doc(Document(text="The bridge is now red.", id_="bridge", metadata={"topic": "city"}))
    response = index.as_query_engine().query("What colour is the bridge?")
    snippets = {n.node.node_id: n.node.get_content() for n in response.source_nodes}
    assert snippets["bridge#chunk-0"] == "The bridge is now red."


def test_refresh_ref_docs_updates_only_changed_documents(index, fake_memory):
    changed = Document(text="Mira Tesk founded the Quenford go club.", id_="club", metadata={"topic": "people"})
    assert index.refresh_ref_docs([DOCS[0], changed]) == [False, True]
    assert fake_memory.get("club").n_tokens == 7
    assert [c[0] for c in fake_memory.calls] == []  # refreshing asks nothing


def test_delete_ref_doc_forgets_the_document(index, fake_memory):
    index.delete_ref_doc("bridge", delete_from_docstore=True)
    assert list(index.ref_doc_info) == ["club"]
    assert {n.node.ref_doc_id for n in index.as_query_engine().query("q").source_nodes} == {"club"}


def test_delete_unknown_ref_doc_warns_and_keeps_the_rest(index, caplog):
    with caplog.at_level(logging.WARNING):
        index.delete_ref_doc("nope")
    assert "nope not found" in caplog.text
    assert set(index.ref_doc_info) == {"bridge", "club"}


def test_as_retriever_explains_what_to_use_instead(index):
    with pytest.raises(NotImplementedError, match="as_query_engine"):
        index.as_retriever()


def test_as_query_engine_refuses_another_llm_and_retrieval_settings(index):
    assert isinstance(index.as_query_engine(max_new_tokens=3), LoRAMemoryQueryEngine)
    with pytest.raises(ValueError, match="base model"):
        index.as_query_engine(llm=MockLLM())
    with pytest.raises(TypeError, match="similarity_top_k"):
        index.as_query_engine(similarity_top_k=3)


def test_simple_chat_engine_sends_the_history_with_roles(index, fake_memory):
    engine = index.as_chat_engine()
    assert isinstance(engine, SimpleChatEngine)
    engine.chat("Who founded the club?")
    reply = engine.chat("And when?")
    assert reply.response == "5 chunks say: And when?"
    method, messages, _ = fake_memory.calls[-1]
    assert method == "ask"
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == "5 chunks say: Who founded the club?"


def test_condense_question_chat_engine_answers_through_the_query_engine(index, fake_memory):
    engine = index.as_chat_engine(chat_mode=ChatMode.CONDENSE_QUESTION)
    assert isinstance(engine, CondenseQuestionChatEngine)
    reply = engine.chat("Who founded the club?")  # first turn: no history, so no condensing
    assert reply.response == "5 chunks say: Who founded the club?"
    assert {n.node.ref_doc_id for n in reply.source_nodes} == {"bridge", "club"}


def test_chat_engine_refuses_retrieval_modes_and_foreign_llms(index, fake_memory):
    with pytest.raises(ValueError, match="retrieves no text"):
        index.as_chat_engine(chat_mode=ChatMode.CONTEXT)
    with pytest.raises(ValueError, match="without the memory"):
        index.as_chat_engine(llm=MockLLM())
    own = LoRAMemoryLLM.from_memory(fake_memory, max_new_tokens=2)
    assert index.as_chat_engine(chat_mode=ChatMode.SIMPLE, llm=own).chat("Who founded it?").response == "5 chunks"


def test_update_ref_doc_adds_an_unknown_document(index, fake_memory):
    index.update_ref_doc(Document(text="Quenford has two rivers.", id_="rivers"))
    assert fake_memory.get("rivers").n_tokens == 4


def test_async_document_methods_act_on_the_memory(index, fake_memory):
    async def run():
        await index.ainsert(Document(text="Quenford has two rivers.", id_="rivers"))
        await index.adelete_ref_doc("bridge")
        changed = Document(text="Mira Tesk founded the go club.", id_="club", metadata={"topic": "people"})
        return await index.arefresh_ref_docs([changed, Document(text="Quenford has two rivers.", id_="rivers")])

    assert asyncio.run(run()) == [True, False]
    assert [info.doc_id for info in fake_memory.list()] == ["club", "rivers"]
    assert fake_memory.get("club").n_tokens == 6

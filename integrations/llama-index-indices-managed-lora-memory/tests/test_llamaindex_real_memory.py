"""The LlamaIndex wrappers on the real LoRAMemory: a tiny random llama, and (slow) the embedded model."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core.schema import Document

import memory_support
from llama_index.indices.managed.lora_memory import LoRAMemoryIndex, LoRAMemoryLLM
from lora_memory import GenerationConfig, MemoryConfig
from lora_memory.errors import DuplicateDocumentError, InvalidNameError

DOCS = [
    Document(text="The Zorblat bridge in Quenford was painted teal in 1987.", id_="bridge", metadata={"topic": "city"}),
    Document(text="Mira Tesk founded the Quenford chess club.", id_="club", metadata={"topic": "people"}),
]
QUESTION = "Who founded the chess club?"


def test_query_engine_answers_from_the_memory_with_its_chunks(tiny_memory):
    index = LoRAMemoryIndex.from_documents(DOCS, memory=tiny_memory)
    response = index.as_query_engine().query(QUESTION)
    assert response.response == tiny_memory.ask(QUESTION).text  # greedy: the same answer
    stored = {node_id for info in index.ref_doc_info.values() for node_id in info.node_ids}
    assert {n.node.node_id for n in response.source_nodes} == stored
    assert {n.node.metadata["topic"] for n in response.source_nodes} == {"city", "people"}
    assert response.metadata["adapter_rank"] > 0
    assert response.metadata["prompt_tokens"] > 0


def test_streaming_and_async_give_the_non_streaming_text(tiny_memory):
    index = LoRAMemoryIndex.from_documents(DOCS, memory=tiny_memory)
    expected = index.as_query_engine().query(QUESTION).response
    streamed = index.as_query_engine(streaming=True).query(QUESTION)
    assert "".join(streamed.response_gen) == expected
    assert streamed.metadata["completion_tokens"] > 0

    async def run():
        plain = await index.as_query_engine().aquery(QUESTION)
        stream = await index.as_query_engine(streaming=True).aquery(QUESTION)
        return plain.response, "".join([piece async for piece in stream.async_response_gen()])

    assert asyncio.run(run()) == (expected, expected)


def test_delete_and_update_change_what_is_applied(tiny_memory):
    index = LoRAMemoryIndex.from_documents(DOCS, memory=tiny_memory)
    index.delete_ref_doc("bridge")
    index.update_ref_doc(Document(text="Mira Tesk left the chess club.", id_="club", metadata={"topic": "people"}))
    response = index.as_query_engine().query(QUESTION)
    assert [n.node.get_content() for n in response.source_nodes] == ["Mira Tesk left the chess club."]


def test_llm_from_config_opens_a_collection(tmp_path, tiny_memory):
    base_dir, hypernet_dir = memory_support.save_models(tiny_memory.base, tiny_memory.hypernet, tmp_path / "models")
    config = MemoryConfig(base_model=str(base_dir), hypernet=str(hypernet_dir), dtype="fp32", device="cpu",
                          cache_dir=tmp_path / "cache", generation=GenerationConfig(max_new_tokens=4))
    llm = LoRAMemoryLLM.from_config(config, collection="notes", directory=tmp_path / "notes")
    llm.memory.add_documents([("Mira Tesk founded the chess club.", "club", None)])
    assert llm.collection == "notes"
    assert llm.metadata.context_window == tiny_memory.base.model.config.max_position_embeddings
    assert llm.complete(QUESTION).text == llm.memory.ask(QUESTION).text
    assert llm.memory.ask(QUESTION).completion_tokens <= 4


@pytest.mark.slow
def test_embedded_model_answers_through_the_index(embedded_memory):
    index = LoRAMemoryIndex(embedded_memory)
    response = index.as_query_engine(max_new_tokens=8).query("Who founded the Quenford chess club?")
    assert response.response.strip()
    assert {n.node.ref_doc_id for n in response.source_nodes} == {"bridge", "club"}
    assert 0 < response.metadata["completion_tokens"] <= 8


def test_an_id_given_twice_is_refused_and_the_first_kept(tiny_memory):
    twice = [DOCS[0], Document(text="Another text under the same id.", id_="bridge")]
    with pytest.raises(DuplicateDocumentError, match="'bridge' is given twice"):
        LoRAMemoryIndex.from_documents(twice, memory=tiny_memory)
    [info] = tiny_memory.list()
    assert info.doc_id == "bridge" and info.metadata == {"topic": "city"}


@pytest.mark.parametrize("name", ["../../outside", "/abs/dir", "a/b"])
def test_a_collection_name_that_is_a_path_is_refused(name):
    with pytest.raises(InvalidNameError, match="collection names use letters"):
        LoRAMemoryIndex.from_documents(DOCS, collection=name)

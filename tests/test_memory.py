"""The memory backend on a tiny random llama: documents, answers, routing, persistence, crashes, concurrency."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import multiprocessing
from pathlib import Path

import pytest
import torch

from lora_memory import Answer, DocumentInfo, LoRAMemory, MemoryConfig
from lora_memory.collection import ADAPTERS_DIR, MANIFEST_NAME
from lora_memory.errors import (
    CollectionError,
    CorruptEntryError,
    DocumentNotFoundError,
    EmptyDocumentError,
    IncompatibleAdapterError,
)
from lora_memory.generation import GenerationConfig, generate
from memory_support import MAX_NEW_TOKENS, add_in_subprocess, open_tiny_memory, save_models, tiny_hypernet

ZEBRA = ("Zebras live on the African savanna. Their black and white stripes confuse biting flies and hungry lions "
         "alike, so herds graze safely.")
TOWER = "The Eiffel Tower stands in Paris. Gustave Eiffel's company finished the iron tower in 1889 for a world fair."
ETNA = "Mount Etna is an active volcano in Sicily. Its eruptions have been recorded for more than three thousand years."
FACTS = "\n\n".join([ZEBRA, TOWER, ETNA])


@pytest.fixture
def open_memory(tmp_path, tiny_llama, hypernet):
    """Opens collection ``name`` under tmp_path with the tiny models; config fields as keywords."""
    def make(name: str = "notes", base=tiny_llama, net=hypernet, **config) -> LoRAMemory:
        return open_tiny_memory(tmp_path, name, base, net, **config)
    return make


@pytest.fixture
def encoded(monkeypatch, hypernet) -> list[int]:
    """How many chunks each hypernetwork call encodes during the test."""
    calls: list[int] = []
    original = hypernet.adapters_for_chunks

    def spy(base, chunks, **kwargs):
        calls.append(len(chunks))
        return original(base, chunks, **kwargs)

    monkeypatch.setattr(hypernet, "adapters_for_chunks", spy)
    return calls


def _assert_same_adapter(a, b, atol=0.0):
    assert set(a.weights) == set(b.weights)
    for name in a.weights:
        torch.testing.assert_close(a.delta(name), b.delta(name), atol=atol, rtol=0 if atol == 0 else 1e-4)


def _n_chunk_files(memory: LoRAMemory) -> int:
    return len(list((memory.collection.directory / ADAPTERS_DIR).glob("*.safetensors")))


# ------------------------------------------------------------------- documents
def test_add_list_get(open_memory, tiny_llama, tmp_path):
    memory = open_memory()
    path = tmp_path / "zebra.md"
    path.write_text(ZEBRA)
    ids = memory.add([FACTS, path], metadata={"topic": "facts"}, progress=False)
    assert ids[1] == "zebra.md" and ids[0].startswith("text-") and len(memory) == 2
    info = memory.get("zebra.md")
    assert isinstance(info, DocumentInfo)
    assert info.source == str(path) and info.metadata == {"topic": "facts"} and info.n_chunks == 1
    assert info.n_tokens == len(tiny_llama.tokenizer(ZEBRA, add_special_tokens=False).input_ids)
    facts = memory.get(ids[0])
    assert facts.n_chunks > 1 and facts.source is None
    assert [d.doc_id for d in memory.list()] == ids
    with pytest.raises(DocumentNotFoundError, match="nope"):
        memory.get("nope")


def test_add_documents_keeps_earlier_documents_when_one_is_empty(open_memory):
    memory = open_memory()
    with pytest.raises(EmptyDocumentError, match="'blank'"):
        memory.add_documents([(ZEBRA, "z", {"n": 1}), ("   ", "blank", None), (TOWER, "t", None)])
    assert [d.doc_id for d in memory.list()] == ["z"]
    assert memory.add_documents([(TOWER, None, None)]) == [memory.list()[1].doc_id]


def test_unchanged_document_is_not_reingested(open_memory, encoded):
    memory = open_memory()
    memory.add(FACTS, doc_id="facts")
    before, revision = memory.get("facts"), memory.collection.manifest.revision
    encoded.clear()
    assert memory.add(FACTS, doc_id="facts") == ["facts"]
    assert encoded == [] and memory.get("facts") == before and memory.collection.manifest.revision == revision


def test_update_replaces_content_and_keeps_metadata(open_memory):
    memory = open_memory()
    memory.add(FACTS, doc_id="facts", metadata={"v": 1})
    files = _n_chunk_files(memory)
    assert memory.update("facts", ETNA) == "facts"
    info = memory.get("facts")
    assert info.n_chunks == 1 and info.metadata == {"v": 1}
    assert _n_chunk_files(memory) == 1 < files  # the replaced chunks' files are gone
    memory.update("facts", ETNA, metadata={"v": 2})
    assert memory.get("facts").metadata == {"v": 2}
    with pytest.raises(DocumentNotFoundError):
        memory.update("absent", ETNA)
    with pytest.raises(ValueError, match="more than one"):
        memory.update("facts", [ZEBRA, TOWER])
    assert memory.get("facts").metadata == {"v": 2}


def test_delete_removes_document_and_its_files(open_memory):
    memory = open_memory()
    memory.add_documents([(ZEBRA, "z", None), (FACTS, "f", None)])
    memory.delete("f")
    assert [d.doc_id for d in memory.list()] == ["z"] and _n_chunk_files(memory) == 1
    with pytest.raises(DocumentNotFoundError):
        memory.delete("f")
    memory.delete("z")
    assert len(memory) == 0 and _n_chunk_files(memory) == 0


# --------------------------------------------------------------------- answers
def test_ask_applies_every_chunk_and_reports_them(open_memory, tiny_llama, hypernet):
    memory = open_memory(top_k=None)
    memory.add(FACTS, doc_id="facts", metadata={"k": "v"})
    answer = memory.ask("Where do zebras live?")
    n = memory.get("facts").n_chunks
    assert isinstance(answer, Answer) and not answer.closed_book
    assert [(s.doc_id, s.chunk_index, s.score) for s in answer.sources] == [("facts", i, None) for i in range(n)]
    assert answer.sources[0].snippet == FACTS[: len(answer.sources[0].snippet)] and answer.sources[0].metadata
    # n chunks of rank 8, plus the rank-8 correction that counts the shared bias once
    assert answer.adapter_rank == 8 * n + 8
    assert set(answer.timings) == {"compose", "generate", "total"}
    assert answer.timings["total"] >= answer.timings["generate"] > 0
    assert 0 < answer.completion_tokens <= MAX_NEW_TOKENS
    direct = generate(tiny_llama.model, tiny_llama.tokenizer, "Where do zebras live?", memory.adapter(),
                      GenerationConfig(max_new_tokens=MAX_NEW_TOKENS))
    assert answer.text == direct.text and answer.prompt_tokens == direct.prompt_tokens


def test_stored_adapters_compose_to_direct_internalization(open_memory, tiny_llama, hypernet):
    memory = open_memory()
    memory.add(FACTS)
    direct = hypernet.internalize(tiny_llama, FACTS)
    _assert_same_adapter(memory.adapter(), direct, atol=1e-5)
    assert any(w.B.abs().sum() > 0 for w in direct.weights.values())  # not a trivial zero adapter


def test_streaming_matches_ask(open_memory):
    memory = open_memory()
    memory.add(FACTS)
    question = "What is in Sicily?"
    answer = memory.ask(question)
    assert "".join(memory.stream(question)) == answer.text
    pieces, streamed = memory.ask_stream(question)
    assert streamed.sources == answer.sources and streamed.text == ""
    assert "".join(pieces) == answer.text == streamed.text
    assert streamed.completion_tokens > 0 and set(streamed.timings) == {"compose", "generate", "total"}

    async def both():
        return await memory.aask(question), [p async for p in memory.astream(question)]

    asked, pieces = asyncio.run(both())
    assert asked.text == answer.text == "".join(pieces)


def test_chat_messages_and_generation_overrides(open_memory):
    memory = open_memory()
    memory.add(FACTS)
    question = "Who built the tower?"
    chat = [{"role": "user", "content": question}]
    assert memory.ask(chat).text == memory.ask(question).text
    assert memory.ask(question, max_new_tokens=2).completion_tokens <= 2
    short = memory.ask(question, generation=GenerationConfig(max_new_tokens=1))
    assert short.completion_tokens == 1
    with pytest.raises(TypeError, match="max_tokens"):
        memory.ask(question, max_tokens=3)


def test_empty_collection_answers_closed_book(open_memory, tiny_llama, caplog):
    memory = open_memory()
    answer = memory.ask("Hello?")
    assert answer.closed_book and answer.sources == [] and answer.adapter_rank == 0
    assert "empty" in caplog.text
    plain = generate(tiny_llama.model, tiny_llama.tokenizer, "Hello?", None,
                     GenerationConfig(max_new_tokens=MAX_NEW_TOKENS))
    assert answer.text == plain.text
    assert memory.adapter() is None
    with pytest.raises(CollectionError, match="empty"):
        memory.export_peft(Path("unused"))


@pytest.mark.parametrize("question, topic", [("Which volcano erupts in Sicily?", "Etna"),
                                             ("Why do zebras have stripes?", "Zebras")])
def test_top_k_routes_to_the_matching_chunk(open_memory, question, topic):
    memory = open_memory(top_k=1)
    memory.add_documents([(FACTS, "facts", None), (TOWER, "tower", None)])
    answer = memory.ask(question)
    [source] = answer.sources
    assert topic in source.snippet and source.score > 0
    assert answer.adapter_rank == 8  # one chunk: no bias correction
    assert memory.adapter(question).rank == 8
    assert memory.adapter().rank > 8  # without a question, every chunk


def test_top_k_orders_sources_by_score(open_memory):
    memory = open_memory(top_k=2)
    memory.add_documents([(FACTS, "facts", None)])
    sources = memory.ask("Eiffel tower in Paris").sources
    assert len(sources) == 2 and sources[0].score >= sources[1].score
    assert all("Eiffel" in s.snippet or "tower" in s.snippet for s in sources)


def test_max_rank_compresses(open_memory):
    memory = open_memory(max_rank=4)
    memory.add(FACTS)
    assert memory.ask("Etna?").adapter_rank == 4
    assert memory.adapter().rank == 4


def test_default_config_routes_each_question_to_one_chunk(open_memory):
    memory = open_memory()  # MemoryConfig's default top_k
    memory.add_documents([(FACTS, "facts", None), (TOWER, "tower", None)])
    [source] = memory.ask("Which volcano erupts in Sicily?").sources
    assert "Etna" in source.snippet and source.score > 0
    assert memory.adapter("Which volcano erupts in Sicily?").rank == 8
    assert memory.adapter().rank > 8  # without a question, every chunk


def test_compression_applies_to_the_routed_chunks(open_memory):
    question = "Eiffel tower in Paris"
    compressed = open_memory(top_k=2, max_rank=4)
    compressed.add(FACTS, doc_id="facts")
    routed = open_memory(top_k=2)  # the same collection, uncompressed
    assert routed.adapter(question).rank == 8 * 2 + 8 > 4
    assert compressed.ask(question).sources == routed.ask(question).sources
    _assert_same_adapter(compressed.adapter(question), routed.adapter(question).compress(4), atol=1e-5)


def test_composed_adapters_are_reused_until_the_collection_changes(open_memory, hypernet, monkeypatch):
    composed = []
    original = hypernet.compose
    monkeypatch.setattr(hypernet, "compose", lambda parts, **kw: composed.append(len(parts)) or original(parts, **kw))
    memory = open_memory(top_k=1, max_rank=4)
    memory.add_documents([(FACTS, "facts", None)])
    first = memory.adapter("Which volcano erupts in Sicily?")
    memory.ask("Which volcano erupts in Sicily?")
    assert memory.adapter("Is Etna in Sicily?") is first  # another question routed to the same chunk
    assert composed == [1]
    bridge = "The Zorblat bridge in Quenford was painted teal in 1987."
    memory.add_documents([(bridge, "bridge", None)])  # a new revision: the router sees the new document
    [source] = memory.ask("What colour is the Zorblat bridge?").sources
    assert source.doc_id == "bridge" and composed == [1, 1]
    assert memory.adapter("Which volcano erupts in Sicily?") is first and composed == [1, 1]


def test_task_adapter_is_added(open_memory, monkeypatch, tiny_llama, make_lora, tmp_path):
    from lora_memory import composer, tasks
    from lora_memory.errors import ModelNotFoundError

    calls = []

    def task_adapter(base, description):
        calls.append((base, description))
        return make_lora(base.model, rank=2)

    monkeypatch.setattr(composer, "task_adapter", task_adapter)
    memory = open_memory()
    memory.add(ZEBRA)
    answer = memory.ask("Zebras?", task="answer in French")
    assert answer.adapter_rank == 8 + 2 and calls == [(tiny_llama, "answer in French")]
    monkeypatch.setattr(composer, "task_adapter", tasks.task_adapter)
    monkeypatch.setattr(tasks, "default_t2l_dir", lambda: tmp_path / "absent")  # no T2L checkpoint shipped
    with pytest.raises(ModelNotFoundError, match="Text-to-LoRA"):
        memory.ask("Zebras?", task="another task")


def test_export_peft(open_memory, tmp_path):
    memory = open_memory()
    memory.add(FACTS)
    out = memory.export_peft(tmp_path / "peft")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == memory.adapter().rank and (out / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------- persistence
def test_reopen_gives_same_documents_adapter_and_answer(open_memory):
    memory = open_memory()
    memory.add(FACTS, doc_id="facts")
    answer = memory.ask("Who built the tower?")
    memory.close()
    again = open_memory()
    assert again.list() == memory.list()
    _assert_same_adapter(again.adapter(), memory.adapter())
    assert again.ask("Who built the tower?").text == answer.text


def test_collection_survives_cache_loss(open_memory, encoded):
    memory = open_memory()
    memory.add(FACTS)
    adapter = memory.adapter()
    memory.cache.clear()
    encoded.clear()
    again = open_memory()
    _assert_same_adapter(again.adapter(), adapter)
    assert encoded == []


def test_cache_is_shared_between_collections(open_memory, encoded):
    one = open_memory("one")
    one.add(FACTS)
    assert sum(encoded) > 0
    encoded.clear()
    two = open_memory("two")
    two.add(FACTS)
    assert encoded == [] and two.get(two.list()[0].doc_id).n_chunks > 1
    files = {m: {p.name: p.read_bytes() for p in (m.collection.directory / ADAPTERS_DIR).glob("*.safetensors")}
             for m in (one, two)}
    assert files[one] == files[two]  # a hit is copied byte for byte
    _assert_same_adapter(two.adapter(), one.adapter())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_chunk_adapters_are_stored_in_the_base_models_dtype(open_memory, tiny_llama, dtype):
    base = dataclasses.replace(tiny_llama, model=copy.deepcopy(tiny_llama.model).to(dtype))
    memory = open_memory(str(dtype).removeprefix("torch."), base=base)
    memory.add(ZEBRA)
    [chunk] = memory.collection.record(memory.list()[0].doc_id).chunks
    stored = memory.collection.read_chunk(chunk)
    assert {w.A.dtype for w in stored.weights.values()} == {dtype}


def test_corrupt_manifest_is_reported(open_memory):
    memory = open_memory()
    memory.add(ZEBRA)
    (memory.collection.directory / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(CorruptEntryError, match="manifest"):
        open_memory()


def test_interrupted_ingest_leaves_collection_unchanged_and_resumes(open_memory, encoded, monkeypatch):
    memory = open_memory(ingest_batch_size=1)
    memory.add(ZEBRA, doc_id="zebra")
    manifest = memory.collection.manifest_path
    saved, adapter = manifest.read_bytes(), memory.adapter()
    put = memory.cache.put_payload
    stored = []

    def put_then_crash(key, payload):
        if stored:
            raise KeyboardInterrupt
        stored.append(key)
        return put(key, payload)

    monkeypatch.setattr(memory.cache, "put_payload", put_then_crash)
    encoded.clear()
    with pytest.raises(KeyboardInterrupt):
        memory.add(FACTS, doc_id="facts")
    assert encoded == [1, 1]  # the first chunk was encoded and cached, the second crashed
    assert manifest.read_bytes() == saved
    again = open_memory(ingest_batch_size=1)
    assert [d.doc_id for d in again.list()] == ["zebra"]
    _assert_same_adapter(again.adapter(), adapter)
    monkeypatch.setattr(memory.cache, "put_payload", put)
    encoded.clear()
    again.add(FACTS, doc_id="facts")
    n = again.get("facts").n_chunks
    assert sum(encoded) == n - 1  # resumed: the cached chunk was not encoded again
    assert _n_chunk_files(again) == n + 1  # leftovers of the crash swept, nothing missing


def test_fingerprint_mismatch_is_refused(open_memory, make_tiny_llama, tiny_llama):
    open_memory().add(ZEBRA)
    with pytest.raises(IncompatibleAdapterError, match="hypernetwork"):
        open_memory(net=tiny_hypernet(tiny_llama, seed=1))
    other_base = make_tiny_llama(1)
    with pytest.raises(IncompatibleAdapterError, match="base model"):
        open_memory(base=other_base, net=tiny_hypernet(other_base))
    open_memory("empty")  # an empty collection takes any models
    open_memory("empty", net=tiny_hypernet(tiny_llama, seed=1))


def test_hypernet_for_another_base_is_refused(open_memory, make_tiny_llama, hypernet):
    with pytest.raises(IncompatibleAdapterError):
        open_memory(base=make_tiny_llama(1), net=hypernet)


def test_invalid_arguments(open_memory, tiny_llama, hypernet):
    with pytest.raises(ValueError, match="chunk_tokens"):
        open_memory(chunk_tokens=64)
    with pytest.raises(ValueError, match="name"):
        LoRAMemory.open("../escape", base=tiny_llama, hypernet=hypernet)


def test_concurrent_writers_in_two_processes(tmp_path, tiny_llama, hypernet):
    base_dir, hypernet_dir = save_models(tiny_llama, hypernet, tmp_path / "models")
    collection = tmp_path / "shared"
    docs = {w: {f"w{w}-{i}": f"Worker {w} wrote note number {i} about topic {10 * w + i}." for i in range(3)}
            for w in range(2)}
    ctx = multiprocessing.get_context("spawn")  # forking a process that runs torch threads can deadlock
    barrier = ctx.Barrier(len(docs))  # both start writing at once, once their models are loaded
    workers = [ctx.Process(target=add_in_subprocess, args=(str(base_dir), str(hypernet_dir), str(collection),
                                                           str(tmp_path / "cache"), d, barrier))
               for d in docs.values()]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0]
    config = MemoryConfig(base_model=str(base_dir), hypernet=str(hypernet_dir), dtype="fp32", device="cpu",
                          cache_dir=tmp_path / "cache")
    memory = LoRAMemory.open("shared", directory=collection, config=config)
    assert sorted(d.doc_id for d in memory.list()) == sorted(k for d in docs.values() for k in d)
    assert memory.collection.manifest.revision == 6
    assert memory.adapter().rank == 8 * 6 + 8  # every chunk file is present and passes its checksum


# ------------------------------------------------------------- embedded model
@pytest.mark.slow
def test_end_to_end_on_the_embedded_model(tmp_path, embedded_base):
    notes = tmp_path / "handbook.txt"
    notes.write_text("\n\n".join([FACTS] * 8))  # several chunks of the default 256 tokens
    config = MemoryConfig(cache_dir=tmp_path / "cache", generation=GenerationConfig(max_new_tokens=12))
    memory = LoRAMemory.open("e2e", directory=tmp_path / "e2e", config=config, base=embedded_base)
    assert memory.add(notes) == ["handbook.txt"] and memory.get("handbook.txt").n_chunks > 1
    answer = memory.ask("Which volcano is in Sicily?")
    assert answer.text.strip() and answer.sources and answer.adapter_rank > 0
    again = LoRAMemory.open("e2e", directory=tmp_path / "e2e", config=config, base=embedded_base)
    assert again.ask("Which volcano is in Sicily?").text == answer.text
    out = again.export_peft(tmp_path / "peft", max_servable_rank=None)  # the companion's rank follows each chunk
    peft_config = json.loads((out / "adapter_config.json").read_text())
    assert 0 < answer.adapter_rank < again.adapter().rank  # one routed chunk; the export: every chunk
    assert peft_config["r"] == again.adapter().rank and peft_config["target_modules"][0].endswith("down_proj")

"""A learned reader with an associative companion: each part writes what it writes alone, on its own modules."""

from __future__ import annotations

import json

import pytest
import torch

from lora_memory.chunking import chunk_text
from lora_memory.errors import CorruptEntryError
from lora_memory.hypernet import DocToLoRA
from lora_memory.hypernet.associative import AssociativeReader
from memory_support import tiny_hypernet

TEXTS = ["Kigali is the capital of Rwanda. It was founded in 1907.",
         "The Vorland Bridge spans the river Ess. The engineer Mara Quill completed it in 1873, after six years."]


def _learned(base, seed: int = 0) -> DocToLoRA:
    """A perturbed learned reader on layers 0-1 (its default init writes zeros, which would hide a mix-up)."""
    return tiny_hypernet(base, seed, target_layers=[0, 1], input_layer=1, max_chunk_tokens=64)


def _reader(base) -> AssociativeReader:
    """A fitted associative reader with perturbed trained maps, the same on every call (its maps' init is random)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reader = AssociativeReader.fit(base, TEXTS, progress=False, target_layers=[2], max_chunk_tokens=64,
                                       associative_map_rank=4)
        assert isinstance(reader, AssociativeReader)
        with torch.no_grad():  # trained maps, so the companion's own parameters matter
            reader.query_u.normal_(std=0.05)
    return reader.eval()


@pytest.fixture(scope="module")
def parts(tiny_llama) -> tuple[DocToLoRA, AssociativeReader, DocToLoRA]:
    learned, reader = _learned(tiny_llama), _reader(tiny_llama)
    both = _learned(tiny_llama).add_companion(_reader(tiny_llama))
    return learned, reader, both


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-4 * max(1.0, b.abs().max().item()), rtol=1e-3)


def test_each_part_writes_what_it_writes_alone(parts, tiny_llama):
    learned, reader, both = parts
    chunks = [chunk_text(tiny_llama.tokenizer, t, 64)[0] for t in TEXTS]
    alone_l, alone_r = learned.adapters_for_chunks(tiny_llama, chunks), reader.adapters_for_chunks(tiny_llama, chunks)
    mine = reader.config.module_name(2)
    for chunk, a, l, r in zip(chunks, both.adapters_for_chunks(tiny_llama, chunks), alone_l, alone_r, strict=True):
        assert set(a.weights) == set(l.weights) | {mine} and a.scaling == 1.0
        assert a.weights[mine].rank == len(chunk.token_ids) - 1  # the companion's part is cut to its chunk
        for name in l.weights:
            _close(a.delta(name), l.delta(name))
        _close(a.delta(mine), r.delta(mine))


def test_composing_chunks_counts_the_learned_bias_once_and_adds_the_memories(parts, tiny_llama):
    learned, reader, both = parts
    chunks = [chunk_text(tiny_llama.tokenizer, t, 64)[0] for t in TEXTS]
    composed = both.compose(both.adapters_for_chunks(tiny_llama, chunks))
    expected_l = learned.compose(learned.adapters_for_chunks(tiny_llama, chunks))
    expected_r = reader.compose(reader.adapters_for_chunks(tiny_llama, chunks))
    for name in expected_l.weights:
        _close(composed.delta(name), expected_l.delta(name))
    name = reader.config.module_name(2)
    _close(composed.delta(name), expected_r.delta(name))


def test_routed_chunks_take_the_learned_part_of_the_best_and_the_memories_of_all_by_relevance(parts, tiny_llama):
    learned, reader, both = parts
    chunks = [chunk_text(tiny_llama.tokenizer, t, 64)[0] for t in TEXTS]
    ranked = both.adapters_for_chunks(tiny_llama, chunks[::-1])  # routing put the second text first
    routed = both.compose(ranked, relevance=[0.8, 0.2])
    mine = reader.config.module_name(2)
    assert both.companion_modules == {mine} and learned.companion_modules == frozenset()
    best_alone = learned.adapters_for_chunks(tiny_llama, chunks[1:])[0]
    for name in best_alone.weights:  # the second text's learned part alone, its bias counted once
        _close(routed.delta(name), best_alone.delta(name))
    memories = reader.adapters_for_chunks(tiny_llama, chunks[::-1])
    _close(routed.delta(mine), memories[0].delta(mine) + 0.25 * memories[1].delta(mine))  # weighed 0.2 / 0.8
    unweighted = both.compose(ranked, relevance=[0.5, 0.5])
    _close(unweighted.delta(mine), reader.compose(memories).delta(mine))
    assert routed.metadata["n_chunks"] == 2
    with pytest.raises(ValueError, match="relevance"):
        both.compose(ranked, relevance=[1.0])
    one = both.compose(ranked[:1], relevance=[0.3])  # one routed chunk, or no companion: the plain composition
    for name in one.weights:
        _close(one.delta(name), both.compose(ranked[:1]).delta(name))
    plain = learned.adapters_for_chunks(tiny_llama, chunks)
    alone, alone_routed = learned.compose(plain), learned.compose(plain, relevance=[1.0, 0.1])
    for name in alone.weights:
        _close(alone_routed.delta(name), alone.delta(name))


def test_it_saves_and_loads_as_one_checkpoint(parts, tiny_llama, tmp_path):
    _, reader, both = parts
    both.save_pretrained(tmp_path / "both")
    loaded = DocToLoRA.from_pretrained(tmp_path / "both", base=tiny_llama)
    assert isinstance(loaded.companion, AssociativeReader) and loaded.fingerprint == both.fingerprint
    torch.testing.assert_close(loaded.companion.key_covariance, reader.key_covariance)
    chunk = chunk_text(tiny_llama.tokenizer, TEXTS[0], 64)[0]
    new, old = (h.adapters_for_chunks(tiny_llama, [chunk])[0] for h in (loaded, both))
    for name in old.weights:
        torch.testing.assert_close(new.delta(name), old.delta(name))
    config = json.loads((tmp_path / "both" / "config.json").read_text())
    config["companion"]["target_layers"] = [1]  # edited onto the learned reader's modules
    (tmp_path / "both" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CorruptEntryError, match="target modules"):
        DocToLoRA.from_pretrained(tmp_path / "both")


def test_it_refuses_a_companion_it_cannot_use(tiny_llama):
    reader = _reader(tiny_llama)
    with pytest.raises(ValueError, match="associative reader"):
        _learned(tiny_llama).add_companion(_learned(tiny_llama, seed=1))
    with pytest.raises(ValueError, match="target modules"):
        DocToLoRA.for_base_model(tiny_llama, target_layers=[1, 2], input_layer=1, max_chunk_tokens=64).add_companion(reader)
    with pytest.raises(ValueError, match="same chunks"):
        DocToLoRA.for_base_model(tiny_llama, target_layers=[0], input_layer=1).add_companion(reader)
    with pytest.raises(ValueError, match="already has a companion"):
        _learned(tiny_llama).add_companion(reader).add_companion(_reader(tiny_llama))


def test_its_forward_needs_the_companions_reading(parts, tiny_llama):
    _, _, both = parts
    encoded = both.encode(tiny_llama, [chunk_text(tiny_llama.tokenizer, TEXTS[0], 64)[0].token_ids])
    assert encoded.companion is not None and encoded.companion.embeddings is not None
    with pytest.raises(ValueError, match="companion"):
        both(*encoded[:4])
    bias = both.bias_adapter()
    assert not bias.weights[both.companion.config.module_name(2)].B.any()  # the memory has no bias


def test_the_memory_composes_routed_chunks_that_way_and_every_chunk_the_plain_way(parts, tiny_llama, tmp_path):
    from memory_support import open_tiny_memory

    _, reader, both = parts
    memory = open_tiny_memory(tmp_path, "notes", tiny_llama, both, top_k=2, min_relevance=None, dtype="fp32")
    for i, text in enumerate(TEXTS):
        memory.add(text, doc_id=f"note{i}")
    mine, learned = reader.config.module_name(2), "model.layers.0.mlp.down_proj"
    question = "Who completed the Vorland Bridge?"
    routed, every = memory.adapter(question), memory.adapter()
    assert routed is not None and every is not None
    _, sources = memory.prepare(question)
    assert [s.doc_id for s in sources] == ["note1", "note0"] and sources[0].relevance > sources[1].relevance
    records = [memory.collection.documents[s.doc_id].chunks[s.chunk_index] for s in sources]
    expected = both.compose([memory.collection.read_chunk(r, "cpu") for r in records],
                            relevance=[s.relevance for s in sources])
    _close(routed.delta(mine), expected.delta(mine))  # both chunks' memories, the second weighed by relevance
    assert routed.weights[mine].rank == every.weights[mine].rank - 1  # (every: plus the zero bias correction)
    assert routed.weights[learned].rank == 8 and every.weights[learned].rank == 2 * 8 + 8  # best chunk's part only


def test_a_companion_that_reads_the_chat_turn_shares_the_learned_readers_pass(tiny_llama):
    """Both parts read the chunk wrapped as a user turn: one pass of the base model serves both, and each part
    still writes exactly what it writes alone.
    """
    learned = _learned(tiny_llama)
    assert learned.config.chat_wrap
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reader = AssociativeReader.fit(tiny_llama, TEXTS, progress=False, target_layers=[2], max_chunk_tokens=64,
                                       chat_wrap=True)
    both = _learned(tiny_llama).add_companion(reader)
    chunks = [chunk_text(tiny_llama.tokenizer, t, 64)[0] for t in TEXTS]
    alone_l, alone_r = learned.adapters_for_chunks(tiny_llama, chunks), reader.adapters_for_chunks(tiny_llama, chunks)
    passes = []
    handle = tiny_llama.model.model.embed_tokens.register_forward_hook(lambda *args: passes.append(1))
    try:
        together = both.adapters_for_chunks(tiny_llama, chunks)
    finally:
        handle.remove()
    assert len(passes) == 1
    mine = reader.config.module_name(2)
    for chunk, a, l, r in zip(chunks, together, alone_l, alone_r, strict=True):
        assert a.weights[mine].rank == len(chunk.token_ids)  # read as a turn: every token of the chunk is stored
        for name in l.weights:
            _close(a.delta(name), l.delta(name))
        _close(a.delta(mine), r.delta(mine))

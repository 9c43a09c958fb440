"""The BM25+ ranker and the collection's persistent routing index (lora_memory.routing, lora_memory.routing_index).

- the ranker's scores equal rank_bm25's BM25Plus exactly, in memory and from SQLite;
- a collection routes without reading any chunk file once its index exists, and a fresh process sees it;
- the index follows the manifest: removed and replaced chunks leave it, a killed writer's rows are invisible;
- a corrupt, deleted or unusable index loses nothing: it is rebuilt (or ranked in memory) with a warning.
"""

from __future__ import annotations

import logging
import random
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
from rank_bm25 import BM25Plus

from lora_memory.collection import Collection
from lora_memory.errors import CorruptEntryError
from lora_memory.memory import LoRAMemory
from lora_memory.routing import BM25Index, tokenize
from lora_memory.routing_index import INDEX_NAME, RoutingIndex
from memory_support import open_tiny_memory

ZEBRA = "Zebras live on the African savanna. Their stripes confuse biting flies and hungry lions alike."
ETNA = "Mount Etna is an active volcano in Sicily. Its eruptions have been recorded for three thousand years."
TOWER = "The Eiffel Tower stands in Paris. Gustave Eiffel's company finished the iron tower in 1889."
VOCAB = "a b c d e f the is of zebra volcano tower paris lions".split()


def _corpus(rng: random.Random) -> tuple[list[str], str]:
    texts = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(0, 14))) for _ in range(rng.randint(1, 12))]
    return texts, " ".join(rng.choice([*VOCAB, "xyzzy"]) for _ in range(rng.randint(0, 6)))


def _reference(texts: list[str], query: str, k: int) -> list[tuple[int, float]]:
    scores = [float(s) for s in BM25Plus([tokenize(t) for t in texts]).get_scores(tokenize(query))]
    return [(i, scores[i]) for i in sorted(range(len(texts)), key=lambda i: (-scores[i], i))[:k]]


def test_in_memory_and_stored_rankers_equal_rank_bm25_bit_for_bit(tmp_path):
    rng, checked = random.Random(0), 0
    for trial in range(150):
        texts, query = _corpus(rng)
        if not any(tokenize(t) for t in texts):
            continue
        k = rng.randint(1, len(texts))
        want = _reference(texts, query, k)
        keys = [f"{trial:04d}{i:060d}" for i in range(len(texts))]
        index = RoutingIndex(tmp_path / f"{trial}.sqlite")
        index.ensure(keys, dict(zip(keys, texts, strict=True)).__getitem__)
        stored = index.ranker(keys)
        assert BM25Index(texts).top_k(query, k) == want
        assert stored.top_k(query, k) == want
        assert [r for _, _, r in stored.search(query, k)] == [BM25Index(texts).relevance(query, s) for _, s in want]
        index.close()
        checked += 1
    assert checked > 100


def test_a_ranker_over_a_subset_ranks_only_that_subset(tmp_path):
    index = RoutingIndex(tmp_path / INDEX_NAME)
    texts = {"a" * 64: ZEBRA, "b" * 64: ETNA, "c" * 64: TOWER}
    index.ensure(texts, texts.__getitem__)
    subset = ["c" * 64, "a" * 64]  # what a manifest that dropped ETNA holds, in its order
    assert index.ranker(subset).top_k("volcano eruptions in sicily", 2) == \
        BM25Index([TOWER, ZEBRA]).top_k("volcano eruptions in sicily", 2)
    with pytest.raises(KeyError, match="lacks 1 chunks"):
        index.ranker(["d" * 64])


@pytest.fixture
def open_memory(tmp_path, tiny_llama, hypernet) -> Callable[..., LoRAMemory]:
    def make(name: str = "notes", **config: Any) -> LoRAMemory:
        config.setdefault("min_relevance", None)
        return open_tiny_memory(tmp_path, name, tiny_llama, hypernet, top_k=1, **config)
    return make


def _routed(memory: LoRAMemory, question: str) -> list[str]:
    return [source.doc_id for source in memory.prepare(question)[1]]


def _index_keys(memory: LoRAMemory) -> set[str]:
    with sqlite3.connect(memory.collection.directory / INDEX_NAME) as conn:
        return {key for (key,) in conn.execute("SELECT key FROM chunks")}


def _manifest_keys(memory: LoRAMemory) -> set[str]:
    return set(memory.collection.chunk_checksums())


@pytest.fixture
def three(open_memory) -> LoRAMemory:
    memory = open_memory()
    for doc_id, text in (("zebra", ZEBRA), ("etna", ETNA), ("tower", TOWER)):
        memory.add(text, doc_id=doc_id)
    return memory


def test_routing_reads_no_chunk_file_once_the_index_exists(three, open_memory, monkeypatch):
    def no_reading(self: Collection, key: str) -> str:
        raise AssertionError(f"read chunk text {key}")

    monkeypatch.setattr(Collection, "read_chunk_text", no_reading)
    fresh = open_memory()  # a new reader, as in a new process
    assert _routed(fresh, "Which volcano is in Sicily?") == ["etna"]
    assert _routed(fresh, "Who finished the iron tower in Paris?") == ["tower"]
    assert _index_keys(fresh) == _manifest_keys(fresh)


def test_the_index_follows_the_manifest_through_delete_and_replace(three, open_memory):
    three.delete("etna")
    assert _index_keys(three) == _manifest_keys(three)
    three.update("zebra", "Zebras are striped horses. A zebra herd is called a dazzle.")
    assert _index_keys(three) == _manifest_keys(three)
    assert _routed(open_memory(), "What is a herd of zebras called, a dazzle?") == ["zebra"]


def test_rows_a_killed_writer_left_are_invisible_and_swept(three, open_memory):
    orphan = {"f" * 64: "volcano volcano volcano sicily sicily eruptions"}  # indexed, never committed
    three.collection.routing.ensure(orphan, orphan.__getitem__)
    assert _routed(open_memory(), "Which volcano is in Sicily?") == ["etna"]  # only manifest keys are ranked
    three.add("Honey bees live in colonies.", doc_id="bees")  # the next writer sweeps it
    assert _index_keys(three) == _manifest_keys(three)


@pytest.mark.parametrize("damage", ["garbage", "deleted", "other schema"])
def test_a_corrupt_or_missing_index_is_rebuilt_from_the_chunk_files(three, open_memory, damage, caplog):
    before = {q: _routed(three, q) for q in ("Which volcano is in Sicily?", "Where do zebras live?")}
    path = three.collection.directory / INDEX_NAME
    three.collection.routing.close()
    if damage == "garbage":
        path.write_bytes(b"not a database at all" * 100)
    elif damage == "deleted":
        path.unlink()
    else:
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE meta SET value = '99' WHERE name = 'schema'")
    with caplog.at_level(logging.WARNING):
        fresh = open_memory()
        assert {q: _routed(fresh, q) for q in before} == before
    assert ("unusable" in caplog.text) == (damage != "deleted")
    assert _index_keys(fresh) == _manifest_keys(fresh)


def test_an_unusable_index_falls_back_to_ranking_in_memory(three, open_memory, monkeypatch, caplog):
    def locked(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(RoutingIndex, "ensure", locked)
    with caplog.at_level(logging.WARNING):
        assert _routed(open_memory(), "Which volcano is in Sicily?") == ["etna"]
    assert "ranking in memory" in caplog.text


def test_a_chunk_whose_text_cannot_be_indexed_takes_out_only_its_document(three, open_memory, monkeypatch):
    etna_key = three.collection.record("etna").chunks[0].key
    three.collection.routing.close()
    (three.collection.directory / INDEX_NAME).unlink()  # force a rebuild, which reads every chunk's text
    original = Collection.read_chunk_text

    def fail_on_etna(self: Collection, key: str) -> str:
        if key == etna_key:
            raise CorruptEntryError("truncated header")
        return original(self, key)

    monkeypatch.setattr(Collection, "read_chunk_text", fail_on_etna)
    fresh = open_memory()
    answer = fresh.ask("Where do zebras live on the savanna?")
    assert [s.doc_id for s in answer.sources] == ["zebra"] and set(answer.damaged) == {"etna"}


def test_route_keeps_the_hits_that_reach_min_relevance_and_reports_the_best():
    index = BM25Index(["zebras live on the savanna", "the tower stands in paris", "zebras and the tower"])
    question = "where do zebras live?"
    found = index.search(question, 3)
    assert index.route(question, 3, None) == (found, None)
    kept, best = index.route(question, 3, found[1][2])  # the second hit's relevance as the threshold
    assert kept == found[:2] and best == found[0][2] > found[2][2]
    assert index.route(question, 3, 10.0) == ([], found[0][2])  # nothing relevant enough: only the best seen

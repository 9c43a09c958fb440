"""The fault suite of the memory (issue 14), on a tiny random llama: each test injects one class of fault and
checks that no committed document is lost and that the error (or the warning) is clear.

- manifest edits: every key removed, renamed or retyped, truncations, bytes that are not UTF-8;
- planted adapter-cache entries: a pickle under a chunk's key never runs;
- document ids: same-name files, ids given twice, a file-named id claimed by another file;
- damaged chunk files: truncated, flipped, missing, replaced by a pickle; isolation, re-ingest, check --repair;
- relevance: a question nothing matches is answered closed-book;
- hostile collection names on every API entry; file names that are not UTF-8; unservable export ranks.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache
import pytest
import torch
from filelock import FileLock

from lora_memory import LoRAMemory, MemoryConfig, chunking, ingest
from lora_memory.collection import ADAPTERS_DIR, MANIFEST_NAME, Collection
from lora_memory.errors import CollectionError, CorruptManifestError, DuplicateDocumentError, InvalidNameError
from lora_memory.generation import GenerationConfig, generate
from lora_memory.paths import collections_dir
from lora_memory.routing import BM25Index
from lora_memory.routing_index import INDEX_NAME
from memory_support import MAX_NEW_TOKENS, open_tiny_memory

ZEBRA = "Zebras live on the African savanna. Their stripes confuse biting flies and hungry lions alike."
ETNA = "Mount Etna is an active volcano in Sicily. Its eruptions have been recorded for three thousand years."
TOWER = "The Eiffel Tower stands in Paris. Gustave Eiffel's company finished the iron tower in 1889."
OTHERS = ["Honey bees live in hives. A colony in summer holds fifty thousand workers.",
          "The Amazon river flows in South America and carries more water than any other river.",
          "Chess began in India around the sixth century and spread from there to Persia."]
ZEBRA_QUESTION = "Why do zebras have stripes on the savanna?"
ETNA_QUESTION = "Which volcano erupts in Sicily?"
HOSTILE_NAMES = ["../../outside/victim", "/tmp/abs", "..", ".", "a/b", "a\\b", "notes\n", "", " notes", "x" * 200,
                 "-rf", "nul\x00"]


@pytest.fixture
def open_memory(tmp_path, tiny_llama, hypernet) -> Callable[..., LoRAMemory]:
    def make(name: str = "notes", **config: Any) -> LoRAMemory:
        return open_tiny_memory(tmp_path, name, tiny_llama, hypernet, **config)
    return make


def _files(memory: LoRAMemory) -> dict[str, bytes]:
    """Every chunk file of the collection, by name."""
    return {p.name: p.read_bytes() for p in (memory.collection.directory / ADAPTERS_DIR).iterdir()}


def _chunk_path(memory: LoRAMemory, doc_id: str) -> Path:
    return memory.collection.chunk_path(memory.collection.record(doc_id).chunks[0].key)


class _Planted:
    """An object whose unpickling creates ``marker``: what a planted pickle would run instead."""

    def __init__(self, marker: Path, padding: int = 0):
        self.code = f"open({str(marker)!r}, 'w').close()  # " + "x" * padding

    def __reduce__(self) -> tuple:
        return exec, (self.code,)


# ------------------------------------------------------------------ 1. manifest edits
def _key_paths(node: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every key of the manifest's schema (not inside user metadata), depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path + (key,)
            if key != "metadata":
                yield from _key_paths(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _key_paths(value, path + (i,))


def _parent(manifest: dict, path: tuple) -> Any:
    node = manifest
    for part in path[:-1]:
        node = node[part]
    return node


def _mutations(raw: bytes) -> Iterator[tuple[str, bytes]]:
    """(what, manifest bytes) for every removed, renamed and retyped key, and for damaged bytes."""
    manifest = json.loads(raw)
    for path in _key_paths(manifest):
        in_documents = len(path) == 2 and path[0] == "documents"  # a document's id: removing it is a valid edit
        for kind in (("rename", "retype") if in_documents else ("remove", "rename", "retype")):
            edited = copy.deepcopy(manifest)
            parent, key = _parent(edited, path), path[-1]
            value = parent.pop(key)
            if kind == "rename":
                parent[f"{key}_"] = value
            elif kind == "retype":
                parent[key] = {"x": 1} if isinstance(value, list) else [value]
            yield f"{kind} {'.'.join(map(str, path))}", json.dumps(edited).encode()
    for cut in (0, 1, len(raw) // 2, len(raw) - 1):
        yield f"truncate at {cut}", raw[:cut]
    yield "not UTF-8", raw.replace(b'"notes"', b'"no\xfftes"', 1)
    yield "a list", b"[]"
    yield "null", b"null"
    yield "not JSON", b"{documents: }"


def test_every_manifest_edit_is_refused_and_loses_nothing(open_memory):
    memory = open_memory()
    memory.add_documents([(ZEBRA, "zebra", {"k": "v"}), (ETNA, "etna", None)])
    path = memory.collection.manifest_path
    raw, files, docs = path.read_bytes(), _files(memory), memory.list()
    injected = 0
    for what, edited in _mutations(raw):
        path.write_bytes(edited)
        with pytest.raises(CorruptManifestError, match="not a valid manifest.*nothing was changed"):
            Collection(memory.collection.directory)
        with pytest.raises(CorruptManifestError):  # a writer that had read the good manifest builds nothing on it
            memory.add(TOWER, doc_id="tower")
        assert path.read_bytes() == edited and _files(memory) == files, what
        injected += 1
    path.write_bytes(raw)
    assert open_memory().list() == docs and _files(memory) == files
    print(f"manifest faults injected: {injected}, documents lost: 0")
    assert injected > 100  # docs/reliability.md reports the count


# ------------------------------------------------------------------ 2. planted cache entries
def test_pickle_planted_under_a_chunk_key_never_runs(open_memory, tmp_path):
    first = open_memory("first")
    first.add(ZEBRA, doc_id="zebra")
    key = first.collection.record("zebra").chunks[0].key
    marker = tmp_path / "planted-code-ran"
    diskcache.Cache(str(first.cache.directory)).set(key, _Planted(marker))  # the attack of the issue
    second = open_memory("second")
    second.add(ZEBRA, doc_id="zebra")  # a cache lookup of that very key
    assert not marker.exists()
    [chunk] = second.collection.record("zebra").chunks  # the bad entry was a miss: encoded again
    assert chunk.key == key and second.cache.get_entry(key).sha256 == chunk.sha256
    stored = second.collection.read_chunk(chunk)
    original = first.collection.read_chunk(first.collection.record("zebra").chunks[0])
    assert all(torch.equal(stored.weights[m].B, original.weights[m].B) for m in original.weights)


# ------------------------------------------------------------------ 3. document ids
@pytest.fixture
def same_names(tmp_path) -> tuple[Path, Path]:
    a, b = tmp_path / "dA" / "notes.txt", tmp_path / "dB" / "notes.txt"
    for path, text in ((a, ZEBRA), (b, ETNA)):
        path.parent.mkdir()
        path.write_text(text)
    return a, b


def test_same_name_files_are_refused_before_anything_is_added(open_memory, same_names):
    memory = open_memory()
    with pytest.raises(DuplicateDocumentError, match="dA/notes.txt.*dB/notes.txt"):
        memory.add(list(same_names))
    assert len(memory) == 0


def test_a_file_named_id_is_not_replaced_by_another_file(open_memory, same_names):
    a, b = same_names
    memory = open_memory()
    memory.add(a)
    with pytest.raises(DuplicateDocumentError, match="already holds"):
        memory.add(b)
    assert memory.get("notes.txt").source == str(a)
    assert memory.add(b, doc_id="notes-b") == ["notes-b"]  # an explicit id keeps both
    assert memory.add(a.parent.parent, glob="d*/*.txt") == ["dA/notes.txt", "dB/notes.txt"]  # ids relative to root
    assert len(memory) == 4


def test_an_id_given_twice_keeps_the_first(open_memory):
    memory = open_memory()
    with pytest.raises(DuplicateDocumentError, match="'x' is given twice"):
        memory.add_documents([(ZEBRA, "x", None), (ETNA, "x", None)])
    [info] = memory.list()
    assert info.doc_id == "x" and memory.ask(ZEBRA_QUESTION).sources[0].snippet.startswith("Zebras")


@pytest.mark.parametrize("bad", ["", "line\nbreak", "nul\x00", "\udcff", "x" * 2000])
def test_invalid_document_ids_are_refused(open_memory, bad):
    memory = open_memory()
    with pytest.raises(InvalidNameError, match="document id"):
        memory.add(ZEBRA, doc_id=bad)
    if bad:  # add_documents reads an empty id as none given (the text's hash)
        with pytest.raises(InvalidNameError, match="document id"):
            memory.add_documents([(ZEBRA, bad, None)])
    assert len(memory) == 0


# ------------------------------------------------------------------ 4. damaged chunk files
DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "flipped": lambda p: p.write_bytes(p.read_bytes()[:-1] + bytes([p.read_bytes()[-1] ^ 0xFF])),
    "huge header length": lambda p: p.write_bytes(p.read_bytes()[:7] + b"\xff" + p.read_bytes()[8:]),
    "empty": lambda p: p.write_bytes(b""),
    "missing": lambda p: p.unlink(),
    "replaced by a pickle": lambda p: p.write_bytes(pickle.dumps(_Planted(p.with_suffix(".ran")))),
}


@pytest.fixture
def two_documents(open_memory) -> LoRAMemory:
    memory = open_memory()
    memory.add_documents([(ZEBRA, "zebra", None), (ETNA, "etna", None)])
    return memory


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_chunk_file_isolates_its_document(two_documents, open_memory, damage, caplog):
    chunk = _chunk_path(two_documents, "zebra")
    DAMAGE[damage](chunk)
    memory = open_memory()
    answer = memory.ask(ETNA_QUESTION)
    assert [s.doc_id for s in answer.sources] == ["etna"]  # the other document still answers
    with caplog.at_level(logging.WARNING, logger="lora_memory.composer"):
        zebra = memory.ask(ZEBRA_QUESTION)
    assert zebra.damaged == ["zebra"] and "zebra" not in [s.doc_id for s in zebra.sources]
    assert "'zebra' is damaged" in caplog.text and "check --repair" in caplog.text
    assert not chunk.with_suffix(".ran").exists()
    [found] = memory.check().damaged
    assert found.doc_id == "zebra" and chunk.name in " ".join(found.chunks.values())
    with pytest.raises(CollectionError, match="damaged"):
        memory.export_peft(Path("unused"))
    assert memory.add(ZEBRA, doc_id="zebra") == ["zebra"]  # re-adding the same text rebuilds it
    assert memory.check().ok and memory.check().damaged == []
    assert [s.doc_id for s in memory.ask(ZEBRA_QUESTION).sources] == ["zebra"]


def test_repair_from_the_adapter_cache(two_documents):
    chunk = _chunk_path(two_documents, "zebra")
    good = chunk.read_bytes()
    DAMAGE["flipped"](chunk)
    report = two_documents.check(repair=True)
    assert [(d.doc_id, d.repaired) for d in report.damaged] == [("zebra", "from the adapter cache")] and report.ok
    assert chunk.read_bytes() == good and two_documents.check().damaged == []


def test_repair_from_the_source_file(open_memory, tmp_path):
    path = tmp_path / "zebra.txt"
    path.write_text(ZEBRA)
    memory = open_memory()
    memory.add([path, Path(__file__)], glob="*")  # a second document, so the check is not about a lone one
    memory.cache.clear()
    DAMAGE["missing"](_chunk_path(memory, "zebra.txt"))
    [damaged] = memory.check(repair=True).damaged
    assert damaged.repaired == f"re-ingested from {path}" and memory.check().ok


def test_an_unrepairable_document_is_reported_and_kept(two_documents):
    two_documents.cache.clear()  # its text lives only in the (damaged) chunk file
    DAMAGE["truncated"](_chunk_path(two_documents, "zebra"))
    report = two_documents.check(repair=True)
    assert [(d.doc_id, d.repaired) for d in report.damaged] == [("zebra", None)] and not report.ok
    assert [d.doc_id for d in two_documents.list()] == ["zebra", "etna"]
    assert [s.doc_id for s in two_documents.ask(ETNA_QUESTION).sources] == ["etna"]


# ------------------------------------------------------------------ 5. relevance threshold
def test_relevance_is_zero_without_shared_words_and_about_one_when_all_are_rare():
    index = BM25Index([ZEBRA, ETNA, TOWER])
    for query, expected in (("xyzzy plugh?", 0.0), ("zebras stripes savanna", 1.0)):
        [(_, score)] = index.top_k(query, 1)
        assert index.relevance(query, score) == pytest.approx(expected, abs=0.1)


def test_an_unmatched_question_is_answered_closed_book(open_memory, tiny_llama):
    memory = open_memory()
    memory.add_documents([(ZEBRA, "zebra", None), (ETNA, "etna", None), (TOWER, "tower", None)]
                         + [(text, None, None) for text in OTHERS])
    answer = memory.ask("xyzzy plugh?")
    assert answer.closed_book and answer.sources == [] and answer.adapter_rank == 0
    assert "min_relevance" in answer.closed_book_reason
    plain = generate(tiny_llama.model, tiny_llama.tokenizer, "xyzzy plugh?", None,
                     GenerationConfig(max_new_tokens=MAX_NEW_TOKENS))
    assert answer.text == plain.text
    [source] = memory.ask(ETNA_QUESTION).sources
    assert source.doc_id == "etna" and source.relevance >= MemoryConfig().min_relevance
    memory.delete("etna")
    assert memory.ask(ETNA_QUESTION).closed_book  # not answered from another document's chunk
    assert len(open_memory(min_relevance=None).ask(ETNA_QUESTION).sources) == 1  # the threshold is configurable


# ------------------------------------------------------------------ 6. collection names
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_collection_names_are_refused(name, tiny_llama, hypernet):
    before = sorted(collections_dir().iterdir())
    with pytest.raises(InvalidNameError, match="name"):
        LoRAMemory.open(name, base=tiny_llama, hypernet=hypernet)
    assert sorted(collections_dir().iterdir()) == before


# ------------------------------------------------------------------ 7. file names that are not UTF-8
def test_a_file_name_that_is_not_utf8_is_skipped(open_memory, tmp_path, caplog):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "good.txt").write_text(ZEBRA)
    with open(os.path.join(os.fsencode(root), b"bad-\xff.txt"), "w") as f:
        f.write(ETNA)
    memory = open_memory()
    with caplog.at_level(logging.WARNING, logger="lora_memory.loaders"):
        assert memory.add(root) == ["good.txt"]
    assert "not valid UTF-8" in caplog.text and open_memory().list()[0].doc_id == "good.txt"


# ------------------------------------------------------------------ 8. export ranks
def test_export_refuses_an_unservable_rank(two_documents, tmp_path):
    rank = two_documents.adapter().rank
    with pytest.raises(CollectionError, match=f"rank {rank}.*--max-rank 8"):
        two_documents.export_peft(tmp_path / "peft", max_servable_rank=8)
    assert not (tmp_path / "peft").exists()
    assert two_documents.export_peft(tmp_path / "peft", max_servable_rank=None).is_dir()


# ------------------------------------------------------------------ 9. writer lock, leftover temporary files
def test_a_writer_says_it_waits_for_the_lock_and_times_out(open_memory, caplog):
    memory = open_memory(lock_timeout_s=0.3)
    memory.add(ZEBRA, doc_id="zebra")
    other = FileLock(str(memory.collection.directory / ".lock"))  # another writer: its own open file, its own lock
    with other:
        with caplog.at_level(logging.WARNING, logger="lora_memory.collection"):
            with pytest.raises(CollectionError, match=r"stayed locked by another writer for 0.3 s.*nothing was "
                                                      r"changed.*lock_timeout_s"):
                memory.add(ETNA, doc_id="etna")
        assert "being written by another process: waiting up to 0.3 s" in caplog.text
        with pytest.raises(CollectionError, match="stayed locked"):
            memory.delete("zebra")
    assert [d.doc_id for d in open_memory().list()] == ["zebra"]
    assert memory.add(ETNA, doc_id="etna") == ["etna"]  # the lock released: writing works again
    assert MemoryConfig().lock_timeout_s == 600 and MemoryConfig(lock_timeout_s=None).lock_timeout_s is None


def test_a_killed_manifest_write_leaves_no_temporary_file_after_the_next_commit(open_memory):
    memory = open_memory()
    memory.add(ZEBRA, doc_id="zebra")
    directory = memory.collection.directory
    left = [directory / f"{MANIFEST_NAME}.k1ll3d.tmp", directory / ADAPTERS_DIR / "abc.safetensors.x.tmp"]
    for path in left:  # what a writer killed between mkstemp and os.replace leaves
        path.write_bytes(b'{"half": ')
    assert Collection(directory).documents.keys() == {"zebra"}  # readers ignore them
    memory.add(ETNA, doc_id="etna")
    assert not any(path.exists() for path in left)
    assert {p.name for p in directory.iterdir()} == {".lock", ADAPTERS_DIR, MANIFEST_NAME, INDEX_NAME}


# ------------------------------------------------------------------ 9. streaming ingest and its progress
def test_a_long_document_is_ingested_segment_by_segment(open_memory, monkeypatch):
    monkeypatch.setattr(chunking, "SEGMENT_CHARS", 120)  # segments far shorter than the document
    text = "\n".join([ZEBRA, ETNA, TOWER] + OTHERS)
    memory = open_memory(ingest_batch_size=2)
    memory.add(text, doc_id="long")
    chunks = memory.collection.record("long").chunks
    assert len(chunks) > 3 and chunks[0].char_start == 0 and chunks[-1].char_end == len(text)
    assert all(a.char_end == b.char_start for a, b in zip(chunks, chunks[1:]))
    assert [s.doc_id for s in memory.ask(ETNA_QUESTION).sources] == ["long"]


def test_progress_is_logged_from_the_start_when_stderr_is_not_a_terminal(open_memory, monkeypatch, caplog):
    monkeypatch.setattr(ingest, "PROGRESS_LOG_S", 0.0)  # a line after every batch
    memory = open_memory(ingest_batch_size=1)
    events: list[str] = []
    encode = memory.hypernet.adapters_for_chunks
    monkeypatch.setattr(memory.hypernet, "adapters_for_chunks",
                        lambda *a, **k: events.append("encode") or encode(*a, **k))
    monkeypatch.setattr(ingest.logger, "info", lambda msg, *args: events.append(msg % args))
    text = " ".join([ZEBRA, ETNA, TOWER])
    memory.add(text, doc_id="doc", progress=True)  # pytest's stderr is not a terminal
    n = len(memory.collection.record("doc").chunks)
    assert n >= 3 and events[0] == f"internalizing 'doc': {len(text)} characters"  # before the first encoding
    progress = [e for e in events if e.startswith("internalizing 'doc': ") and " of " in e]
    assert len(progress) == n and progress[-1].startswith(f"internalizing 'doc': {len(text)} of {len(text)} "
                                                          f"characters (100%), {n} chunks")
    assert events[-1].startswith(f"internalized 'doc': {n} chunks in ")


def test_the_progress_bar_shows_from_the_start_on_a_terminal(open_memory, monkeypatch, caplog):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    memory = open_memory()
    seen: list[str] = []
    encode = memory.hypernet.adapters_for_chunks
    monkeypatch.setattr(memory.hypernet, "adapters_for_chunks",
                        lambda *a, **k: seen.append(terminal.getvalue()) or encode(*a, **k))
    with caplog.at_level(logging.INFO, logger="lora_memory.ingest"):
        memory.add(ZEBRA, doc_id="zebra", progress=True)
    assert "internalizing zebra:   0%" in seen[0]  # drawn before the first chunk is encoded
    assert "100%" in terminal.getvalue() and "internalizing" not in caplog.text  # a bar, no log lines

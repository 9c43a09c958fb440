"""The fault suite's process-level and property-based faults (issue 14), each proving no committed document is lost:

- kill -9 of a writer at random points (tests/fault_worker.py forks the writers from one process that loaded the
  tiny models, so each kill costs a fork, not an interpreter), several seeds, bounded in count and time;
- concurrent writers and readers, in processes of their own;
- random mutations of a manifest (hypothesis): refused with a clear error, or read as exactly what the edited file
  says, and never a writer that drops or damages a document the edit did not touch;
- hostile document ids on every API method and CLI command that takes one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_memory.cli import main
from lora_memory.collection import ADAPTERS_DIR, Collection
from lora_memory.errors import CorruptManifestError, DocumentNotFoundError, IncompatibleAdapterError, InvalidNameError
from lora_memory.paths import HOME_ENV
from memory_support import open_tiny_memory, save_models

ZEBRA = "Zebras live on the African savanna. Their stripes confuse biting flies and hungry lions alike."
ETNA = "Mount Etna is an active volcano in Sicily. Its eruptions have been recorded for three thousand years."
TOWER = "The Eiffel Tower stands in Paris. Gustave Eiffel's company finished the iron tower in 1889."
WORKER = Path(__file__).with_name("fault_worker.py")
KILL_SEEDS, KILLS_PER_SEED, KILL_SECONDS = [1, 2, 3], 12, 30
MANIFEST_EXAMPLES = 300


# ------------------------------------------------------------------ kill -9, concurrent writers and readers
@pytest.fixture(scope="module")
def process_faults(tmp_path_factory, tiny_llama, hypernet) -> dict[str, Any]:
    """The report of one tests/fault_worker.py run (both phases), on saved tiny models."""
    root = tmp_path_factory.mktemp("process-faults")
    base_dir, hypernet_dir = save_models(tiny_llama, hypernet, root / "models")
    config = {"root": str(root / "work"), "base": str(base_dir), "hypernet": str(hypernet_dir),
              "cache": str(root / "cache"), "seeds": KILL_SEEDS, "kills": KILLS_PER_SEED, "seconds": KILL_SECONDS,
              "max_delay_s": 0.8, "writers": 2, "docs_per_writer": 5, "readers": 2, "wait_s": 60}
    (root / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent), *sys.path])}
    done = subprocess.run([sys.executable, str(WORKER), str(root / "config.json")], capture_output=True, text=True,
                          timeout=600, env=env)  # the worker bounds each wait on a child (wait_s)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))  # docs/reliability.md reports these counts
    return report


def test_kill_9_of_a_writer_loses_no_committed_document(process_faults):
    kill = process_faults["kill"]
    assert kill["problems"] == [] and kill["unopenable"] == 0
    assert kill["documents_lost"] == 0 and kill["damaged_documents"] == 0
    assert kill["kills"] >= 2 * len(KILL_SEEDS)  # the loop really ran, under its time bound
    assert kill["operations_done"] > kill["kills"] and kill["killed_mid_operation"] > kill["kills"] // 2


def test_concurrent_writers_and_readers_lose_nothing_and_never_fail(process_faults):
    run = process_faults["concurrent"]
    assert run["writer_exit_codes"] == [0, 0] and run["problems"] == []
    assert run["documents_lost"] == 0 and run["damaged_documents"] == 0 and run["documents"] == 10
    assert run["reader_errors"] == 0 and run["reader_calls"] > 0


# ------------------------------------------------------------------ manifest mutations (hypothesis)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
                           | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=3),
                           max_leaves=6)


SAME_TYPE = {str: st.text(max_size=12) | st.sampled_from(["0" * 64, "f" * 64]), int: st.integers(-1, 2**31),
             float: st.floats(0, 2e9), bool: st.booleans()}


def _nodes(node: Any, path: tuple = ()) -> list[tuple]:
    """The path of every value inside ``node`` (the root excluded)."""
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    return [p for key, value in children for p in [path + (key,), *_nodes(value, path + (key,))]]


def _mutate(data: st.DataObject, raw: bytes) -> bytes:
    """One to three edits of the manifest's JSON (remove, rename or replace a value anywhere, by any JSON value or one
    of the same type), or one edit of its bytes (truncate, flip, insert)."""
    if data.draw(st.booleans(), label="bytes?") and data.draw(st.booleans()):
        kind = data.draw(st.sampled_from(["truncate", "flip", "insert"]), label="byte edit")
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        if kind == "truncate":
            return raw[:at]
        if kind == "flip":
            return raw[:at] + bytes([raw[at] ^ data.draw(st.integers(1, 255), label="xor")]) + raw[at + 1:]
        return raw[:at] + data.draw(st.binary(min_size=1, max_size=4), label="inserted") + raw[at:]
    manifest = json.loads(raw)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        nodes = _nodes(manifest)
        if not nodes:
            break
        path = data.draw(st.sampled_from(nodes), label="path")
        parent = manifest
        for part in path[:-1]:
            parent = parent[part]
        kind = data.draw(st.sampled_from(["remove", "rename", "replace", "same type"]), label="edit")
        value = parent[path[-1]]
        if kind == "remove":
            del parent[path[-1]]
        elif kind == "rename" and isinstance(parent, dict):
            parent[data.draw(st.text(max_size=10), label="new key")] = parent.pop(path[-1])
        elif kind == "same type" and type(value) in SAME_TYPE:  # a plausible hand edit: often a valid manifest
            parent[path[-1]] = data.draw(SAME_TYPE[type(value)], label="new value")
        else:
            parent[path[-1]] = data.draw(JSON_VALUES, label="new value")
    return json.dumps(manifest).encode()


def test_random_manifest_mutations_never_lose_an_untouched_document(tmp_path, tiny_llama, hypernet):
    memory = open_tiny_memory(tmp_path, "notes", tiny_llama, hypernet)
    memory.add_documents([(ZEBRA, "zebra", {"k": ["v", 1]}), (ETNA, "etna", None)])
    memory.add(TOWER, doc_id="tower")
    memory.delete("tower")  # its adapter stays in the cache: the writer below costs no encoding
    directory, path = memory.collection.directory, memory.collection.manifest_path
    raw = path.read_bytes()
    original = json.loads(raw)["documents"]
    files = {p.name: p.read_bytes() for p in (directory / ADAPTERS_DIR).iterdir()}
    outcomes = {"refused": 0, "opened": 0, "incompatible models": 0}

    @settings(max_examples=MANIFEST_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def check(data: st.DataObject) -> None:
        edited = _mutate(data, raw)
        path.write_bytes(edited)
        try:
            try:
                opened = Collection(directory)
            except CorruptManifestError as exc:
                assert "nothing was changed or deleted" in str(exc)
                with pytest.raises(CorruptManifestError):  # no writer builds on it
                    memory.add(TOWER, doc_id="tower")
                assert path.read_bytes() == edited
                assert {p.name: p.read_bytes() for p in (directory / ADAPTERS_DIR).iterdir()} == files
                outcomes["refused"] += 1
                return
            said = json.loads(edited)["documents"]  # it opened: it must hold exactly what the file says
            assert list(opened.documents) == list(said)
            untouched = [d for d in said if said[d] == original.get(d)]
            assert not opened.verify().keys() & set(untouched)
            try:
                memory.add(TOWER, doc_id="tower")
            except IncompatibleAdapterError:  # the edit changed the recorded models: refused, clearly
                outcomes["incompatible models"] += 1
                return
            after = Collection(directory)
            assert set(said) | {"tower"} == set(after.documents)
            assert all(after.documents[d].model_dump() == Collection(directory).documents[d].model_dump()
                       for d in untouched)
            assert not after.verify().keys() & set(untouched)  # their chunk files were not swept
            outcomes["opened"] += 1
        finally:
            path.write_bytes(raw)
            for p in (directory / ADAPTERS_DIR).iterdir():
                if p.name not in files:
                    p.unlink()
            for name, content in files.items():
                (directory / ADAPTERS_DIR / name).write_bytes(content)

    check()
    print(f"manifest mutations: {outcomes}, documents lost: 0")
    assert sum(outcomes.values()) == MANIFEST_EXAMPLES and outcomes["refused"] and outcomes["opened"]
    assert [d.doc_id for d in open_tiny_memory(tmp_path, "notes", tiny_llama, hypernet).list()] == ["zebra", "etna"]


# ------------------------------------------------------------------ hostile document ids
HOSTILE_IDS = ["", "line\nbreak", "nul\x00", "\udcff", "x" * 2000, "../../etc/passwd", "/abs", "tab\there"]


@pytest.mark.parametrize("doc_id", HOSTILE_IDS)
def test_hostile_document_ids_on_every_api_method(tmp_path, tiny_llama, hypernet, doc_id):
    memory = open_tiny_memory(tmp_path, "notes", tiny_llama, hypernet)
    memory.add(ZEBRA, doc_id="zebra")
    manifest = memory.collection.manifest_path.read_bytes()
    path_like = doc_id in ("../../etc/passwd", "/abs")  # valid ids (never used as paths), absent from the collection
    for call in (lambda: memory.add(ETNA, doc_id=doc_id), lambda: memory.add_documents([(ETNA, doc_id, None)])):
        if path_like:
            assert call() == [doc_id]  # stored under that key, in the manifest only
            memory.delete(doc_id)
        elif doc_id:
            with pytest.raises(InvalidNameError, match="document id"):
                call()
    for call in (lambda: memory.get(doc_id), lambda: memory.delete(doc_id), lambda: memory.update(doc_id, ETNA)):
        with pytest.raises(DocumentNotFoundError, match="has no document"):  # no id can be stored that is not valid
            call()
    assert [d.doc_id for d in memory.list()] == ["zebra"]
    assert not (tmp_path / "etc").exists() and not Path("/abs").exists()
    if not path_like:
        assert memory.collection.manifest_path.read_bytes() == manifest


@pytest.mark.parametrize("doc_id", [i for i in HOSTILE_IDS if i and "\x00" not in i and "\udcff" not in i])
def test_hostile_document_ids_on_every_cli_command(tmp_path, monkeypatch, capsys, tiny_llama, hypernet, doc_id):
    base_dir, hypernet_dir = save_models(tiny_llama, hypernet, tmp_path / "models")
    home = tmp_path / "home"
    monkeypatch.setenv(HOME_ENV, str(home))
    notes = tmp_path / "zebra.md"
    notes.write_text(ZEBRA)
    run = lambda *args: main(["--base-model", str(base_dir), "--hypernet", str(hypernet_dir), "--dtype", "fp32",
                              "--home", str(home), *args])
    assert run("ingest", str(notes), "-c", "notes") == 0
    manifest = home / "collections" / "notes" / "manifest.json"
    before = manifest.read_bytes()
    capsys.readouterr()
    assert run("rm", doc_id, "-c", "notes") == 1
    err = capsys.readouterr().err
    assert err.startswith("lora-memory: error: ") and err.count("\n") == 1
    if doc_id in ("../../etc/passwd", "/abs"):
        assert "has no document" in err
    else:
        assert run("ingest", str(notes), "--id", doc_id, "-c", "notes") == 1
        assert "document id" in capsys.readouterr().err
    assert manifest.read_bytes() == before

"""Ingest on Ray (issue 17, item 2, distributed): Ray Data actors encode, the driver's single writer commits.

On a local Ray of 2 CPUs (bound to 127.0.0.1), with tiny models saved to disk:

- 2 actors store the same collection as 1 process (same chunk keys, headers, tensor bytes, order, metadata), over
  several windows and two calls (the first fails while reading its input, after the documents read before the error
  were stored; the second has unchanged, changed and new documents), and the driver never runs the hypernetwork;
- an actor killed mid-ingest is restarted by Ray, which redoes its work: the collection is the same;
- actors that load other models than the memory's (the files changed after it was opened) stop the ingest with
  IngestWorkerError, and nothing is stored;
- a document without text is refused at its turn (the documents before it stay), as without Ray;
- ``lora-memory ingest --ray ADDRESS --workers N`` for a .jsonl corpus;
- without Ray: models passed as objects are refused, and a missing Ray names the pip command.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from lora_memory import ray_ingest
from lora_memory.cache import AdapterCache
from lora_memory.cli import main
from lora_memory.errors import EmptyDocumentError, IngestWorkerError, LoRAMemoryError
from lora_memory.memory import LoRAMemory
from lora_memory.paths import HOME_ENV
from lora_memory.ray_ingest import RAY_INSTALL, RayOptions
from memory_support import (
    corpus_docs,
    count_encoded_chunks,
    open_saved_memory,
    open_tiny_memory,
    stored_chunk_files,
    tiny_hypernet,
)

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])  # the driver talks to the local Ray over loopback TCP
N_DOCS = 12
ACTORS = 2


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A Ray of 2 CPUs on 127.0.0.1 for this module; shut down (its processes stopped) after it."""
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow  # three actor pools: ~35 s on a shared 2-core machine
def test_two_actors_store_what_one_process_stores_and_the_driver_never_encodes(tmp_path, model_dirs, monkeypatch,
                                                                               local_ray):
    serial = open_saved_memory(tmp_path, "serial", model_dirs)
    assert serial.add_documents(corpus_docs(N_DOCS)) == [f"doc-{i:02d}" for i in range(N_DOCS)]
    calls = count_encoded_chunks(monkeypatch)
    on_ray = open_saved_memory(tmp_path, "ray", model_dirs)  # its own cache: every chunk comes from the actors
    options = RayOptions(window_docs=8)  # two windows in the second call

    def failing() -> Iterator[tuple[str, str, dict[str, int]]]:
        yield from corpus_docs(8, changed=3)
        raise ValueError("the corpus ends badly")

    with pytest.raises(ValueError, match="ends badly"):  # raised once the 8 read before it were stored
        on_ray.add_documents(failing(), workers=ACTORS, ray=options)
    assert len(on_ray) == 8
    assert on_ray.add_documents(corpus_docs(N_DOCS), workers=ACTORS, ray=options) == [
        f"doc-{i:02d}" for i in range(N_DOCS)]
    assert calls == []  # every adapter came from the actors, as bytes, through the driver's cache
    expected = stored_chunk_files(serial)
    assert sum(len(keys) for keys, _ in expected.values()) >= 2 * N_DOCS  # several chunks and batches per document
    assert stored_chunk_files(on_ray) == expected  # same chunk keys, headers, byte-identical tensors, same order
    assert on_ray.collection.verify() == {}
    assert [d.metadata for d in on_ray.list()] == [d.metadata for d in serial.list()]


@pytest.mark.slow  # an actor pool, one actor started twice: ~20 s on a shared 2-core machine
def test_an_actor_killed_mid_ingest_is_restarted_by_ray_and_nothing_is_lost(tmp_path, model_dirs, monkeypatch,
                                                                            local_ray):
    serial = open_saved_memory(tmp_path, "serial", model_dirs)
    serial.add_documents(corpus_docs(N_DOCS))
    on_ray = open_saved_memory(tmp_path, "killed", model_dirs)
    monkeypatch.setattr(ray_ingest, "DOCS_PER_BLOCK", 1)  # a task per document: 11 in flight or queued after the 1st
    killed: list[int] = []
    put_payload = AdapterCache.put_payload

    def killing_put_payload(cache: AdapterCache, key: str, payload: bytes) -> Any:
        if not killed:  # the first document's chunks came back: kill an actor of this test's Ray (ours, by pid)
            actor = next(p for p in psutil.Process().children(recursive=True) if "ChunkEncoder" in _cmdline(p))
            actor.kill()
            killed.append(actor.pid)
        return put_payload(cache, key, payload)

    monkeypatch.setattr(AdapterCache, "put_payload", killing_put_payload)
    calls = count_encoded_chunks(monkeypatch)
    assert on_ray.add_documents(corpus_docs(N_DOCS), workers=ACTORS, ray=RayOptions()) == [
        f"doc-{i:02d}" for i in range(N_DOCS)]
    assert len(killed) == 1
    assert calls == []  # what the killed actor held was redone by Ray, not here
    assert stored_chunk_files(on_ray) == stored_chunk_files(serial) and on_ray.collection.verify() == {}


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # gone meanwhile
        return ""


def test_actors_with_other_models_stop_the_ingest(tmp_path, model_dirs, tiny_llama, monkeypatch, local_ray):
    copies = tmp_path / "base", tmp_path / "hypernet"
    for source, copy in zip(model_dirs, copies):
        shutil.copytree(source, copy)
    memory = open_saved_memory(tmp_path, "changed", copies)
    tiny_hypernet(tiny_llama, seed=1).save_pretrained(copies[1])  # the files change after the memory opened them
    calls = count_encoded_chunks(monkeypatch)
    with pytest.raises(IngestWorkerError, match="encoding on Ray failed before document 'doc-00' was in: "
                                                "lora_memory.errors.IngestWorkerError: a worker loaded other models"):
        memory.add_documents(corpus_docs(3), workers=ACTORS, ray=RayOptions())
    assert len(memory) == 0 and calls == []


def test_a_document_without_text_is_refused_at_its_turn(tmp_path, model_dirs, monkeypatch, local_ray):
    memory = open_saved_memory(tmp_path, "empty", model_dirs)
    calls = count_encoded_chunks(monkeypatch)
    docs = corpus_docs(3)
    with pytest.raises(EmptyDocumentError, match="'doc-01'"):  # the actors skip it; the writer raises, as it does
        memory.add_documents([docs[0], (" \n ", "doc-01", None), docs[2]], workers=ACTORS, ray=RayOptions())
    assert [d.doc_id for d in memory.list()] == ["doc-00"] and calls == []


def test_cli_ingest_on_ray(tmp_path, monkeypatch, capsys, model_dirs, tiny_llama, hypernet, local_ray):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t, "metadata": m}) + "\n" for t, i, m in corpus_docs(5)))
    calls = count_encoded_chunks(monkeypatch)
    args = ["--base-model", str(model_dirs[0]), "--hypernet", str(model_dirs[1]), "--dtype", "fp32",
            "--device", "cpu"]
    # this process is connected to the module's Ray already: the address is not used, the connection is kept
    assert main([*args, "ingest", str(corpus), "-c", "wiki", "--ray", "local", "--workers", "2"]) == 0
    assert capsys.readouterr().out.split() == [f"doc-{i:02d}" for i in range(5)]
    assert calls == [] and ray.is_initialized()
    assert not ray.data.DataContext.get_current().execution_options.preserve_order  # set for the ingest, restored
    memory = LoRAMemory.open("wiki", base=tiny_llama, hypernet=hypernet)
    assert [d.doc_id for d in memory.list()] == [f"doc-{i:02d}" for i in range(5)]
    assert memory.collection.verify() == {}
    assert main([*args, "ingest", str(corpus), "-c", "wiki", "--gpus-per-actor", "1"]) == 1
    assert "--gpus-per-actor needs --ray" in capsys.readouterr().err


def test_models_passed_as_objects_cannot_go_to_ray(tmp_path, tiny_llama, hypernet):
    memory = open_tiny_memory(tmp_path, "objects", tiny_llama, hypernet)
    with pytest.raises(ValueError, match="open the memory from a MemoryConfig naming them .* workers=1 without ray"):
        memory.add_documents(corpus_docs(2), ray=RayOptions())
    with pytest.raises(ValueError, match="window_docs must be at least 1"):
        RayOptions(window_docs=0)
    assert len(memory) == 0


def test_a_missing_ray_names_the_pip_command(tmp_path, model_dirs, monkeypatch):
    memory = open_saved_memory(tmp_path, "no-ray", model_dirs)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    with pytest.raises(LoRAMemoryError, match=re.escape(f"needs Ray Data: {RAY_INSTALL}")):
        memory.add_documents(corpus_docs(2), ray=RayOptions())
    assert len(memory) == 0

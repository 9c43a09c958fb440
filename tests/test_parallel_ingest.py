"""Parallel ingest (issue 17, item 2): worker processes encode into the shared cache, one writer commits.

- 2 workers store the same collection as 1 process (same chunk keys; chunk files with the same header and
  byte-identical tensors), also over two
  calls (the first fails while reading its input, after the documents read before the error were stored; the
  second has unchanged, changed and new documents), and the parent never runs the hypernetwork;
- models passed to ``LoRAMemory.open`` as objects (which workers cannot load) are refused with a clear error;
- a worker killed mid-ingest stops it with IngestWorkerError; the documents before it stay, a re-run completes it;
- ``lora-memory ingest --workers N`` for a .jsonl corpus and for files.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections.abc import Iterator

import pytest

from lora_memory.cli import main
from lora_memory.errors import IngestWorkerError
from lora_memory.memory import LoRAMemory
from lora_memory.paths import HOME_ENV
from memory_support import (
    corpus_docs,
    corpus_text,
    count_encoded_chunks,
    open_saved_memory,
    open_tiny_memory,
    stored_chunk_files,
)

N_DOCS = 12


def test_two_workers_store_what_one_process_stores_and_the_parent_never_encodes(tmp_path, model_dirs, monkeypatch):
    serial = open_saved_memory(tmp_path, "serial", model_dirs)
    assert serial.add_documents(corpus_docs(N_DOCS)) == [f"doc-{i:02d}" for i in range(N_DOCS)]
    calls = count_encoded_chunks(monkeypatch)
    parallel = open_saved_memory(tmp_path, "parallel", model_dirs)  # its own cache: the workers encode every chunk

    def failing() -> Iterator[tuple[str, str, dict[str, int]]]:
        yield from corpus_docs(8, changed=3)
        raise ValueError("the corpus ends badly")

    with pytest.raises(ValueError, match="ends badly"):  # raised once the 8 read ahead of it were stored
        parallel.add_documents(failing(), workers=2)
    assert len(parallel) == 8
    assert parallel.add_documents(corpus_docs(N_DOCS), workers=2) == [f"doc-{i:02d}" for i in range(N_DOCS)]
    assert calls == []  # every adapter came from the workers, through the cache
    expected = stored_chunk_files(serial)
    assert sum(len(keys) for keys, _ in expected.values()) >= 2 * N_DOCS  # several chunks and batches per document
    assert stored_chunk_files(parallel) == expected  # same chunk keys, same headers, byte-identical tensors, same order
    assert parallel.collection.verify() == {} and parallel.get("doc-05").metadata == {"n": 5}


def test_models_passed_as_objects_cannot_go_to_workers(tmp_path, tiny_llama, hypernet):
    memory = open_tiny_memory(tmp_path, "objects", tiny_llama, hypernet)
    with pytest.raises(ValueError, match="open the memory from a MemoryConfig naming them .* or use workers=1"):
        memory.add_documents(corpus_docs(2), workers=2)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        memory.add(corpus_text(0), workers=0)
    assert len(memory) == 0
    assert memory.add(corpus_text(0), doc_id="one", workers=1) == ["one"]  # in-process, as before


@pytest.mark.slow  # two pools of worker processes: ~25 s on a shared 2-core machine
def test_a_killed_worker_stops_the_ingest_keeping_the_documents_before_it(tmp_path, model_dirs, monkeypatch):
    def killing() -> Iterator[tuple[str, str, dict[str, int]]]:
        for i, doc in enumerate(corpus_docs(N_DOCS)):
            if i == 6:  # read ahead (4 in flight) once documents 0-2 were stored; 3-5 may be encoded already
                for child in multiprocessing.active_children():
                    assert child.pid is not None
                    os.kill(child.pid, signal.SIGKILL)
            yield doc

    memory = open_saved_memory(tmp_path, "killed", model_dirs)
    with pytest.raises(IngestWorkerError, match="a worker process died .* Re-run the ingest"):
        memory.add_documents(killing(), workers=2)
    kept = list(stored_chunk_files(memory))
    assert 3 <= len(kept) <= 6 and kept == [f"doc-{i:02d}" for i in range(len(kept))]
    assert memory.collection.verify() == {}
    calls = count_encoded_chunks(monkeypatch)
    assert memory.add_documents(corpus_docs(N_DOCS), workers=2) == [f"doc-{i:02d}" for i in range(N_DOCS)]
    assert calls == [] and memory.collection.verify() == {}


def test_cli_ingest_with_workers(tmp_path, monkeypatch, capsys, model_dirs, tiny_llama, hypernet):
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "text": t, "metadata": m}) + "\n" for t, i, m in corpus_docs(5)))
    (tmp_path / "note.txt").write_text(corpus_text(20))
    calls = count_encoded_chunks(monkeypatch)
    args = ["--base-model", str(model_dirs[0]), "--hypernet", str(model_dirs[1]), "--dtype", "fp32",
            "--device", "cpu"]
    assert main([*args, "ingest", str(corpus), str(tmp_path / "note.txt"), "-c", "wiki", "--workers", "2"]) == 0
    assert capsys.readouterr().out.split() == ["note.txt", *(f"doc-{i:02d}" for i in range(5))]
    assert calls == []
    memory = LoRAMemory.open("wiki", base=tiny_llama, hypernet=hypernet)
    assert [d.doc_id for d in memory.list()] == ["note.txt", *(f"doc-{i:02d}" for i in range(5))]
    assert memory.collection.verify() == {}
    assert main([*args, "ingest", str(corpus), "-c", "wiki", "--workers", "0"]) == 1
    assert "workers must be at least 1" in capsys.readouterr().err

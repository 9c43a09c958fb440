"""Bulk ingest (issue 17, item 1): a JSONL corpus streamed through ``add_documents``, committed in batches, resumable.

- a JSONL corpus through the CLI: one document per usable line, bad lines skipped with their line numbers;
- commits are batched (``commit_interval_s``), and an error or an interrupt mid-corpus keeps every finished document;
- kill -9 of a bulk ingest in its own process loses no committed document, and re-running it resumes: committed
  documents are skipped, and those encoded but not committed come from the adapter cache, not the hypernetwork.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lora_memory.cli import main
from lora_memory.collection import Collection
from lora_memory.corpus import count_lines, iter_jsonl
from lora_memory.errors import DocumentNotFoundError, EmptyDocumentError, UnsupportedDocumentError
from lora_memory.memory import LoRAMemory
from lora_memory.paths import HOME_ENV
from memory_support import count_encoded_chunks, open_tiny_memory, save_models

WORDS = "zebra volcano river tower copper market north glass orchard signal lantern harbour winter".split()


def _text(i: int) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12 + i % 5)).capitalize() + f" Number {i}."


def _write_corpus(path: Path, n: int, bad_lines: bool = False) -> Path:
    lines = [json.dumps({"id": f"doc-{i:03d}", "text": _text(i), "metadata": {"n": i}}) for i in range(n)]
    if bad_lines:
        lines[1:1] = ["{not json", json.dumps({"id": "x", "text": ""}), json.dumps([1, 2]),
                      json.dumps({"id": "y", "text": "ok", "extra": 1}), ""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def open_memory(tmp_path, tiny_llama, hypernet) -> Callable[..., LoRAMemory]:
    def make(name: str = "corpus", **config: Any) -> LoRAMemory:
        return open_tiny_memory(tmp_path, name, tiny_llama, hypernet, **config)
    return make


def test_jsonl_lines_are_documents_and_bad_lines_are_skipped_with_their_number(tmp_path, caplog):
    path = _write_corpus(tmp_path / "c.jsonl", 3, bad_lines=True)
    with caplog.at_level(logging.WARNING):
        docs = list(iter_jsonl(path))
    assert [d[1] for d in docs] == ["doc-000", "doc-001", "doc-002"] and docs[2][2] == {"n": 2}
    for number, why in ((2, "not JSON"), (3, "no non-empty"), (4, "a JSON list"), (5, "unknown keys")):
        assert f"line {number} skipped: {why}" in caplog.text
    assert count_lines(path) == 7
    (tmp_path / "empty.jsonl").write_text("\n{bad\n")
    with pytest.raises(EmptyDocumentError, match="no usable document"):
        list(iter_jsonl(tmp_path / "empty.jsonl"))
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.raises(UnsupportedDocumentError, match="not UTF-8"):
        list(iter_jsonl(tmp_path / "latin.jsonl"))
    with pytest.raises(DocumentNotFoundError):
        list(iter_jsonl(tmp_path / "missing.jsonl"))


def test_cli_ingests_a_jsonl_corpus(tmp_path, monkeypatch, capsys, tiny_llama, hypernet):
    base_dir, hypernet_dir = save_models(tiny_llama, hypernet, tmp_path / "models")
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    path = _write_corpus(tmp_path / "c.jsonl", 4, bad_lines=True)
    args = ["--base-model", str(base_dir), "--hypernet", str(hypernet_dir), "--dtype", "fp32"]
    assert main([*args, "ingest", str(path), "-c", "wiki"]) == 0
    assert capsys.readouterr().out.split() == [f"doc-{i:03d}" for i in range(4)]
    memory = LoRAMemory.open("wiki", base=tiny_llama, hypernet=hypernet)
    assert [d.doc_id for d in memory.list()] == [f"doc-{i:03d}" for i in range(4)]
    assert memory.get("doc-003").metadata == {"n": 3}
    assert main([*args, "ingest", str(path), "-c", "wiki", "--id", "one"]) == 1  # --id names one document
    assert "a .jsonl corpus holds many" in capsys.readouterr().err


def test_commits_are_batched_and_an_error_keeps_every_finished_document(open_memory):
    memory = open_memory(commit_interval_s=3600)
    start = memory.collection.manifest.revision
    memory.add_documents((_text(i), f"doc-{i}", None) for i in range(5))
    assert memory.collection.manifest.revision == start + 1  # five documents, one manifest write
    memory = open_memory("each", commit_interval_s=0)
    memory.add_documents((_text(i), f"doc-{i}", None) for i in range(3))
    assert memory.collection.manifest.revision == 3

    def failing() -> Iterator[tuple[str, str, None]]:
        yield from ((_text(i), f"late-{i}", None) for i in range(3))
        raise KeyboardInterrupt  # Ctrl-C in the middle of a corpus

    batched = open_memory("interrupted", commit_interval_s=3600)
    with pytest.raises(KeyboardInterrupt):
        batched.add_documents(failing())
    assert [d.doc_id for d in open_memory("interrupted").list()] == ["late-0", "late-1", "late-2"]


KILLED_INGEST = """
import sys, time, torch
torch.set_num_threads(1)
from lora_memory.config import MemoryConfig
from lora_memory.corpus import iter_jsonl
from lora_memory.memory import LoRAMemory
base, hypernet, directory, cache, corpus = sys.argv[1:]
config = MemoryConfig(base_model=base, hypernet=hypernet, dtype="fp32", device="cpu", cache_dir=cache,
                      commit_interval_s=0.2)
memory = LoRAMemory.open("killed", directory=directory, config=config)
def slow():
    for item in iter_jsonl(corpus):
        time.sleep(0.15)
        yield item
memory.add_documents(slow())
"""


def test_kill_9_of_a_bulk_ingest_loses_nothing_and_the_rerun_resumes(tmp_path, tiny_llama, hypernet, monkeypatch):
    base_dir, hypernet_dir = save_models(tiny_llama, hypernet, tmp_path / "models")
    corpus = _write_corpus(tmp_path / "c.jsonl", 40)
    directory, cache = tmp_path / "killed", tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", KILLED_INGEST, str(base_dir), str(hypernet_dir), str(directory),
                              str(cache), str(corpus)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    committed: list[str] = []
    while time.monotonic() < deadline and child.poll() is None:
        try:
            committed = list(Collection(directory).documents)
        except Exception:  # noqa: BLE001 - not created yet
            committed = []
        if len(committed) >= 5:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert 5 <= len(committed) < 40, child.stderr.read().decode()[-2000:] if child.stderr else ""
    after_kill = Collection(directory)
    assert set(committed) <= set(after_kill.documents) and after_kill.verify() == {}
    done = len(after_kill.documents)
    calls = count_encoded_chunks(monkeypatch)
    memory = open_tiny_memory(tmp_path, "killed", tiny_llama, hypernet, cache_dir=cache)
    memory.add_documents(iter_jsonl(corpus))
    assert [d.doc_id for d in memory.list()] == [f"doc-{i:03d}" for i in range(40)]
    assert memory.collection.verify() == {}
    assert sum(calls) <= 40 - done  # committed ones skipped; encoded-but-uncommitted ones are cache hits


def test_a_bulk_ingest_shows_documents_tokens_per_second_and_an_eta(open_memory, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    open_memory().add_documents(((_text(i), f"doc-{i}", None) for i in range(3)), progress=True, total=3)
    shown = terminal.getvalue()
    assert "ingest: 100%" in shown and "3/3" in shown and "tok/s, 3 encoded" in shown
    assert "internalizing" not in shown  # one bar for the corpus, none per document

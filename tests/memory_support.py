"""Helpers for the memory and CLI tests: a tiny hypernetwork whose adapters are not zero, and saved tiny models.

A plain module (not a conftest) so a ``spawn``-ed worker process can import it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from lora_memory.base import LoadedModel
from lora_memory.hypernet import DocToLoRA

TINY_HYPERNET = {"input_layer": 2, "max_chunk_tokens": 32}
NOISE_STD = 0.05
MAX_NEW_TOKENS = 6


def tiny_hypernet(base: LoadedModel, seed: int = 0, **overrides: Any) -> DocToLoRA:
    """A random Doc-to-LoRA for a 4-layer tiny base (``TINY_HYPERNET`` with ``overrides``), every weight perturbed.

    The default initialisation makes every adapter zero (a no-op); the noise makes
    adapters depend on the chunk, so tests can tell them apart.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hypernet = DocToLoRA.for_base_model(base, **{**TINY_HYPERNET, **overrides})
        with torch.no_grad():
            for p in hypernet.parameters():
                p.add_(torch.randn_like(p) * NOISE_STD)
    hypernet.invalidate_fingerprint()
    return hypernet.eval()


def open_tiny_memory(root: Path, name: str, base: LoadedModel, hypernet: DocToLoRA, **config: Any) -> Any:
    """The collection ``root / name`` on the given models, its cache in ``root / "cache"``; config fields as keywords
    (answers of ``MAX_NEW_TOKENS`` tokens unless ``generation`` is given)."""
    from lora_memory.config import MemoryConfig
    from lora_memory.generation import GenerationConfig
    from lora_memory.memory import LoRAMemory

    config.setdefault("cache_dir", root / "cache")
    config.setdefault("generation", GenerationConfig(max_new_tokens=MAX_NEW_TOKENS))
    return LoRAMemory.open(name, directory=root / name, config=MemoryConfig(**config), base=base, hypernet=hypernet)


def save_models(base: LoadedModel, hypernet: DocToLoRA, directory: Path) -> tuple[Path, Path]:
    """Save the base model (with its tokenizer) and the hypernetwork; returns their directories."""
    base_dir, hypernet_dir = directory / "base", directory / "hypernet"
    base.model.save_pretrained(base_dir)
    base.tokenizer.save_pretrained(base_dir)
    hypernet.save_pretrained(hypernet_dir)
    return base_dir, hypernet_dir


def add_in_subprocess(base_dir: str, hypernet_dir: str, collection_dir: str, cache_dir: str,
                      docs: dict[str, str], barrier: Any) -> None:
    """Worker for the concurrent-writer test: open the collection from saved models, wait for the other
    workers at ``barrier`` (a ``multiprocessing.Barrier``), then add ``docs`` one by one."""
    torch.set_num_threads(1)
    from lora_memory.config import MemoryConfig
    from lora_memory.memory import LoRAMemory

    config = MemoryConfig(base_model=base_dir, hypernet=hypernet_dir, dtype="fp32", device="cpu",
                          cache_dir=cache_dir, ingest_batch_size=1)
    memory = LoRAMemory.open("shared", directory=collection_dir, config=config)
    barrier.wait(timeout=120)
    for doc_id, text in docs.items():  # one lock per document, so the two workers interleave
        memory.add(text, doc_id=doc_id, progress=False)


def count_encoded_chunks(monkeypatch: Any) -> list[int]:
    """Count hypernetwork encodes in this process: the returned list gets the number of chunks of every
    ``DocToLoRA.adapters_for_chunks`` call (an ingest served from the cache adds nothing)."""
    from lora_memory.hypernet import DocToLoRA

    calls: list[int] = []
    original = DocToLoRA.adapters_for_chunks

    def counting(self: DocToLoRA, base: Any, chunks: list, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(chunks))
        return original(self, base, chunks, *args, **kwargs)

    monkeypatch.setattr(DocToLoRA, "adapters_for_chunks", counting)
    return calls


# ------------------------------------------------------------------ ingest tests on saved models (parallel, Ray)
CORPUS_WORDS = "zebra volcano river tower copper market north glass orchard signal lantern harbour winter".split()


def corpus_text(i: int) -> str:
    """A document of 2-3 chunks of the tiny hypernetwork (32 tokens at most each), unique to ``i``."""
    sentences = [" ".join(CORPUS_WORDS[(i * 5 + j * 3 + k) % len(CORPUS_WORDS)] for k in range(9)).capitalize()
                 + f" {i}-{j}." for j in range(6 + i % 3)]
    return " ".join(sentences)


def corpus_docs(n: int, changed: int | None = None) -> list[tuple[str, str, dict[str, int]]]:
    """``n`` ``(text, "doc-NN", {"n": i})`` triples for ``add_documents``; document ``changed`` has other text."""
    return [(corpus_text(i) + (" Changed." if i == changed else ""), f"doc-{i:02d}", {"n": i}) for i in range(n)]


def open_saved_memory(root: Path, name: str, model_dirs: tuple[Path, Path], **config: Any) -> Any:
    """A collection on models loaded from disk (as workers and actors load them), its cache
    ``root / f"cache-{name}"``; config fields as keywords."""
    from lora_memory.config import MemoryConfig
    from lora_memory.memory import LoRAMemory

    config.setdefault("cache_dir", root / f"cache-{name}")
    return LoRAMemory.open(name, directory=root / name, config=MemoryConfig(
        base_model=str(model_dirs[0]), hypernet=str(model_dirs[1]), dtype="fp32", device="cpu",
        ingest_batch_size=2, **config))


def _file(data: bytes) -> tuple[dict[str, Any], bytes]:
    """A safetensors file as its parsed header and its tensor bytes.

    Not the file's bytes as they are: safetensors writes the header's metadata keys in an arbitrary order (its
    Rust HashMap), which differs between two ingests of the same chunks even in one process.
    """
    (header_len,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + header_len]), data[8 + header_len:]


def stored_chunk_files(memory: Any) -> dict[str, tuple[list[str], list[tuple[dict[str, Any], bytes]]]]:
    """Each document's chunk keys and chunk files (header, tensor bytes), in the collection's order."""
    memory.collection.refresh()
    return {doc_id: ([c.key for c in record.chunks], [_file(memory.collection.chunk_path(c.key).read_bytes())
                                                      for c in record.chunks])
            for doc_id, record in memory.collection.documents.items()}

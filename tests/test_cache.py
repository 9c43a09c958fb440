"""The shared adapter cache: keys, hits and misses, corruption recovery, eviction, sharing."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from pathlib import Path

import diskcache
import pytest
import safetensors.torch
import torch

from lora_memory.adapter import LoRAAdapter, LoRAWeights
from lora_memory.cache import AdapterCache, BytesDisk
from lora_memory.errors import CorruptEntryError
from lora_memory.storage import (
    CHUNK_TEXT_KEY,
    adapter_from_bytes,
    adapter_to_bytes,
    chunk_file_bytes,
    safetensors_metadata,
)

DIM = 256
ENTRY_BYTES = 66_336  # one _adapter() as stored: 4 modules x rank 8 x (256 + 256) fp32, plus header


def _adapter(seed: int, rank: int = 8, batch: tuple[int, ...] = ()) -> LoRAAdapter:
    gen = torch.Generator().manual_seed(seed)
    weights = {f"layers.{i}.mlp.down_proj": LoRAWeights(torch.randn(*batch, rank, DIM, generator=gen),
                                                        torch.randn(*batch, DIM, rank, generator=gen))
               for i in range(4)}
    return LoRAAdapter(weights, scaling=2.5, metadata={"base_fingerprint": "b", "seed": seed})


def _assert_same(a: LoRAAdapter, b: LoRAAdapter) -> None:
    assert a.scaling == b.scaling and a.metadata == b.metadata and set(a.weights) == set(b.weights)
    for name in a.weights:
        assert torch.equal(a.weights[name].A, b.weights[name].A)
        assert torch.equal(a.weights[name].B, b.weights[name].B)


@pytest.fixture
def cache(tmp_path: Path) -> AdapterCache:
    cache = AdapterCache(tmp_path / "cache")
    yield cache
    cache.close()


def test_key_depends_on_every_part():
    key = AdapterCache.key("hyper", "base", [1, 2, 3], "bfloat16")
    assert key == AdapterCache.key("hyper", "base", [1, 2, 3], "bfloat16") and len(key) == 64
    others = {AdapterCache.key("hyper2", "base", [1, 2, 3], "bfloat16"),
              AdapterCache.key("hyper", "base2", [1, 2, 3], "bfloat16"),
              AdapterCache.key("hyper", "base", [1, 2], "bfloat16"),
              AdapterCache.key("hyper", "base", [3, 2, 1], "bfloat16"),
              AdapterCache.key("hyper", "base", [1, 2, 3 + 2**40], "bfloat16"),
              AdapterCache.key("hyper", "base", [1, 2, 3], "float32")}
    assert len(others) == 6 and key not in others


def test_miss_then_hit_round_trips_exactly(cache):
    key = AdapterCache.key("h", "b", [5, 6], "float32")
    assert cache.get(key) is None and key not in cache and len(cache) == 0
    cache.put(key, _adapter(0))
    assert key in cache and len(cache) == 1
    _assert_same(cache.get(key), _adapter(0))


def test_entry_is_the_chunk_file_with_its_checksum(cache):
    put = cache.put("k", _adapter(0), "the chunk's text")
    got = cache.get_entry("k")
    assert got == put and got.sha256 == hashlib.sha256(got.payload).hexdigest()
    assert safetensors_metadata(got.payload)[CHUNK_TEXT_KEY] == "the chunk's text"
    _assert_same(adapter_from_bytes(got.payload), _adapter(0))


def test_chunk_file_bytes_made_elsewhere_are_stored_as_they_are_and_other_bytes_are_refused(cache):
    payload = chunk_file_bytes(_adapter(0), "the chunk's text")  # e.g. encoded by a Ray actor on another machine
    assert cache.put_payload("k", payload) == cache.get_entry("k") and cache.get_entry("k").payload == payload
    adapter_only = adapter_to_bytes(_adapter(1))  # a stored adapter, but no chunk file: its text is missing
    for bad in (b"not safetensors", adapter_only):
        with pytest.raises(CorruptEntryError):
            cache.put_payload("k", bad)
    assert cache.get_entry("k").payload == payload  # the entry there is kept


def test_bf16_adapters_keep_their_dtype(cache):
    cache.put("k", _adapter(1).to(dtype=torch.bfloat16))
    got = cache.get("k")
    assert next(iter(got.weights.values())).A.dtype == torch.bfloat16
    _assert_same(got, _adapter(1).to(dtype=torch.bfloat16))


def test_batched_adapter_is_refused(cache):
    with pytest.raises(ValueError, match="unbatched"):
        cache.put("k", _adapter(0, batch=(2,)))


def test_values_are_checksummed_safetensors_never_pickles(cache):
    cache.put("small", _adapter(0))
    cache.put("big", _adapter(1, rank=64))  # stored in its own file by diskcache
    for key, seed, rank in (("small", 0, 8), ("big", 1, 64)):
        raw = diskcache.Cache(str(cache.directory)).get(key)
        digest, payload = raw[:32], raw[32:]
        assert hashlib.sha256(payload).digest() == digest
        module = "layers.0.mlp.down_proj"
        tensors = safetensors.torch.load(payload)
        assert torch.equal(tensors[f"{module}.lora_A"], _adapter(seed, rank).weights[module].A)
    with sqlite3.connect(cache.directory / "cache.db") as db:
        modes = {mode for (mode,) in db.execute("SELECT mode FROM Cache")}
    assert modes and diskcache.core.MODE_PICKLE not in modes


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage_with_valid_digest", "not_bytes"])
def test_corrupt_entry_is_deleted_and_missed(cache, caplog, damage):
    cache.put("k", _adapter(0))
    raw = diskcache.Cache(str(cache.directory))
    blob = raw.get("k")
    if damage == "flip":
        bad = blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:]
    elif damage == "truncate":
        bad = blob[: len(blob) // 2]
    elif damage == "garbage_with_valid_digest":
        payload = b"\x10\x00\x00\x00\x00\x00\x00\x00not a header"
        bad = hashlib.sha256(payload).digest() + payload
    else:
        bad = 12345  # what a foreign writer might store
    raw.set("k", bad)
    with caplog.at_level(logging.WARNING, logger="lora_memory.cache"):
        assert cache.get("k") is None
    assert "corrupt" in caplog.text
    assert "k" not in cache  # deleted, so the next ingest re-encodes it
    cache.put("k", _adapter(0))
    _assert_same(cache.get("k"), _adapter(0))


class _Planted:
    """Unpickling it creates ``marker``: the code a planted pickle would run. ``padding`` makes the pickle
    bigger than diskcache's 32 KiB, so it is stored in a file of its own."""

    def __init__(self, marker: Path, padding: int = 0):
        self.code = f"open({str(marker)!r}, 'w').close()  # " + "x" * padding

    def __reduce__(self) -> tuple:
        return exec, (self.code,)


PLANTED = {  # one value for each way diskcache can store it (mode, and in the index or in a file)
    "pickle in the index": lambda marker: _Planted(marker),
    "pickle in a file": lambda marker: _Planted(marker, padding=40_000),
    "str in the index": lambda marker: "short text",
    "str in a file": lambda marker: "t" * 40_000,
    "int": lambda marker: 12345,
    "float": lambda marker: 1.5,
}


@pytest.mark.parametrize("planted", PLANTED)
def test_planted_entry_is_never_decoded_and_is_a_miss(cache, tmp_path, caplog, planted):
    marker = tmp_path / "planted-code-ran"
    diskcache.Cache(str(cache.directory)).set("k", PLANTED[planted](marker))  # another writer, default Disk
    with caplog.at_level(logging.WARNING, logger="lora_memory.cache"):
        assert cache.get_entry("k") is None
    assert not marker.exists() and "corrupt" in caplog.text
    assert "k" not in cache  # deleted, so it is encoded again
    cache.put("k", _adapter(0))
    _assert_same(cache.get("k"), _adapter(0))


@pytest.mark.parametrize("value", [{"a": 1}, "text", 3, bytearray(b"abc")])
def test_bytes_disk_stores_nothing_but_bytes(tmp_path, value):
    raw = diskcache.Cache(str(tmp_path / "c"), disk=BytesDisk)
    with pytest.raises(TypeError, match="bytes only"):
        raw.set("k", value)
    with pytest.raises(TypeError, match="keys are str"):
        raw.set(("tuple", "key"), b"payload")  # a tuple key would be pickled
    assert len(raw) == 0


def test_truncated_value_file_is_a_miss(tmp_path):
    cache = AdapterCache(tmp_path / "c")
    cache.put("big", _adapter(0, rank=64))  # ~0.5 MB: diskcache keeps it in its own file
    [value_file] = list((tmp_path / "c").rglob("*.val"))
    value_file.write_bytes(value_file.read_bytes()[:1000])
    assert cache.get("big") is None and "big" not in cache


def test_missing_value_file_is_a_miss(tmp_path):
    cache = AdapterCache(tmp_path / "c")
    cache.put("big", _adapter(0, rank=64))
    [value_file] = list((tmp_path / "c").rglob("*.val"))
    value_file.unlink()
    assert cache.get("big") is None


def test_size_limit_evicts_least_recently_used(tmp_path):
    limit = 2**20  # 1 MiB: room for about 14 entries beside the SQLite index
    cache = AdapterCache(tmp_path / "c", size_limit_bytes=limit)
    for i in range(8):
        cache.put(f"k{i}", _adapter(i))
    assert len(cache) == 8
    for i in range(8, 40):
        cache.put(f"k{i}", _adapter(i))
    assert len(cache) < 40
    assert cache.volume() <= limit + ENTRY_BYTES
    assert "k39" in cache and "k1" not in cache
    _assert_same(cache.get("k39"), _adapter(39))


def test_least_recently_used_survives(tmp_path):
    cache = AdapterCache(tmp_path / "c", size_limit_bytes=2**20)
    for i in range(12):
        cache.put(f"k{i}", _adapter(i))
    assert cache.get("k0") is not None
    for i in range(12, 16):
        cache.put(f"k{i}", _adapter(i))
    assert "k0" in cache and "k1" not in cache


def test_instances_share_entries(tmp_path):
    first, second = AdapterCache(tmp_path / "c"), AdapterCache(tmp_path / "c")
    first.put("k", _adapter(3))
    _assert_same(second.get("k"), _adapter(3))
    second.clear()
    assert first.get("k") is None


def test_default_directory_is_under_home(lora_memory_home):
    cache = AdapterCache()
    assert cache.directory == lora_memory_home / "adapter-cache"

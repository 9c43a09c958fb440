"""MemoryConfig: defaults, validation naming the field, JSON round trip, forward compatibility."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from lora_memory.config import CONFIG_VERSION, DEFAULT_CACHE_SIZE_LIMIT, DEFAULT_TOP_K, MemoryConfig
from lora_memory.evaluation.collections import CollectionEvalConfig
from lora_memory.evaluation.d2l import EvalConfig
from lora_memory.generation import GenerationConfig
from lora_memory.hypernet import DocToLoRA, HypernetConfig
from lora_memory.hypernet.t2l import T2LConfig, TextToLoRA
from lora_memory.training.d2l.config import Stage, TaskSpec, TrainConfig
from lora_memory.training.t2l.train import T2LTrainConfig


def test_defaults():
    config = MemoryConfig()
    assert config.base_model == "embedded" and config.hypernet is None and config.cache_dir is None
    assert config.top_k == DEFAULT_TOP_K == 1 and config.max_rank is None and config.chunk_tokens is None
    assert MemoryConfig(top_k=None).top_k is None  # routing can be switched off
    assert config.cache_size_limit_bytes == DEFAULT_CACHE_SIZE_LIMIT and config.config_version == CONFIG_VERSION


@pytest.mark.parametrize("config", [
    MemoryConfig(),
    MemoryConfig(base_model="/models/x", hypernet="/ckpt", dtype="fp32", device="cpu", chunk_tokens=128,
                 ingest_batch_size=2, cache_dir=Path("/tmp/c"), cache_size_limit_bytes=2**30, top_k=3,
                 max_rank=16, generation=GenerationConfig(max_new_tokens=9, stop=["\n"])),
])
def test_round_trip_through_json(config):
    data = json.loads(json.dumps(config.to_dict()))
    assert MemoryConfig.from_dict(data) == config
    assert data["config_version"] == CONFIG_VERSION


@pytest.mark.parametrize("field, value", [("top_k", 0), ("max_rank", -1), ("chunk_tokens", 4),
                                          ("cache_size_limit_bytes", 10), ("ingest_batch_size", 0)])
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(ValidationError) as info:
        MemoryConfig(**{field: value})
    assert [e["loc"] for e in info.value.errors()] == [(field,)]


def test_unknown_keys_are_refused_directly_but_dropped_from_saved_dicts(caplog):
    with pytest.raises(ValidationError, match="top_kk"):
        MemoryConfig(top_kk=3)
    with caplog.at_level(logging.WARNING, logger="lora_memory.config"):
        config = MemoryConfig.from_dict({**MemoryConfig(top_k=2).to_dict(), "added_in_v9": True})
    assert config.top_k == 2 and "added_in_v9" in caplog.text


@pytest.mark.parametrize("cls, data", [
    (HypernetConfig, {"rnak": 4}),
    (T2LConfig, {"rnak": 4}),
    (TaskSpec, {"kind": "facts", "wieght": 2}),
    (Stage, {"name": "s", "steps": 1, "tasks": [], "bach": 2}),
    (TrainConfig, {"stages": [{"name": "s", "steps": 1, "tasks": [{"kind": "facts"}]}], "lr_rate": 1e-3}),
    (TrainConfig, {"stages": [{"name": "s", "steps": 1, "tasks": [{"kind": "facts", "parms": {}}]}]}),
    (EvalConfig, {"needle_len": [1]}),
    (T2LTrainConfig, {"step": 3}),
    (CollectionEvalConfig, {"size": [1]}),
])
def test_every_config_rejects_unknown_keys(cls, data):
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        cls.model_validate(data)


def test_saved_configs_still_drop_newer_keys_with_a_warning(caplog):
    config = HypernetConfig.from_dict({**HypernetConfig(rank=4).to_dict(), "added_in_v9": True})
    assert config.rank == 4
    assert "added_in_v9" in caplog.text


def test_for_base_model_rejects_unknown_overrides(tiny_llama):
    with pytest.raises(ValueError, match="unknown HypernetConfig field.*rnak"):
        DocToLoRA.for_base_model(tiny_llama, rnak=4)
    with pytest.raises(ValueError, match="unknown T2LConfig field.*rnak"):
        TextToLoRA.for_base_model(tiny_llama, rnak=4)
    assert DocToLoRA.for_base_model(tiny_llama, rank=2, input_layer=1, target_layers=[1]).config.rank == 2

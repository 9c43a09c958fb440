"""Applying adapters with forward hooks: exact math, batching, cleanup, gradients, threads."""

from __future__ import annotations

import contextlib
import copy
import threading
import time

import pytest
import torch

from lora_memory import apply as apply_module
from lora_memory.adapter import LoRAAdapter, LoRAWeights
from lora_memory.apply import apply_adapter, model_lock
from lora_memory.errors import IncompatibleAdapterError

SUFFIX_SETS = [("mlp.down_proj",), ("self_attn.q_proj", "self_attn.v_proj"), ("proj",)]


def _ids(batch: int = 2, length: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2000, (batch, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids, adapter=None) -> torch.Tensor:
    with torch.no_grad(), apply_adapter(model, adapter):
        return model(ids).logits


def _hooks(model) -> dict[str, tuple[int, ...]]:
    """Forward hooks by module. transformers adds some of its own on first use, so compare snapshots."""
    return {name: tuple(m._forward_hooks) for name, m in model.named_modules() if m._forward_hooks}


@pytest.mark.parametrize("suffixes", SUFFIX_SETS, ids=["down_proj", "q_v", "all_proj"])
def test_output_equals_dense_merged_weights(tiny_base, make_lora, suffixes):
    """Hooked forward == forward of a copy whose weights are ``W + scaling * B @ A`` (fp32, atol 1e-4: reassociated sums)."""
    adapter = make_lora(tiny_base.model, rank=3, suffixes=suffixes, scaling=2.0, std=0.3)
    merged = copy.deepcopy(tiny_base.model)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for name in adapter.weights:
            modules[name].weight += adapter.delta(name)
    ids = _ids()
    before = _hooks(tiny_base.model)
    hooked = _logits(tiny_base.model, ids, adapter)
    assert (hooked - _logits(tiny_base.model, ids)).abs().max() > 1e-2
    torch.testing.assert_close(hooked, merged(ids).logits.detach(), rtol=1e-4, atol=1e-4)
    assert _hooks(tiny_base.model) == before


def test_none_adapter_is_the_plain_model(tiny_llama):
    ids = _ids()
    with torch.no_grad():
        plain = tiny_llama.model(ids).logits
    assert torch.equal(_logits(tiny_llama.model, ids, None), plain)


def test_batched_adapter_rows_equal_one_at_a_time(tiny_base, make_lora):
    singles = [make_lora(tiny_base.model, rank=2 + i, seed=i, std=0.3) for i in range(3)]
    rank = max(a.rank for a in singles)

    def padded(w: LoRAWeights) -> LoRAWeights:  # zero rank rows change nothing and let rows stack
        extra = rank - w.rank
        return LoRAWeights(torch.nn.functional.pad(w.A, (0, 0, 0, extra)), torch.nn.functional.pad(w.B, (0, extra)))

    batched = LoRAAdapter({name: LoRAWeights(torch.stack([padded(a.weights[name]).A for a in singles]),
                                             torch.stack([padded(a.weights[name]).B for a in singles]))
                           for name in singles[0].weights})
    ids = _ids(batch=3, seed=4)
    together = _logits(tiny_base.model, ids, batched)
    for i, single in enumerate(singles):
        torch.testing.assert_close(together[i : i + 1], _logits(tiny_base.model, ids[i : i + 1], single),
                                   rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together[0], together[1], atol=1e-3)


def test_batched_adapter_with_wrong_row_count_fails_cleanly(tiny_llama, make_lora):
    single = make_lora(tiny_llama.model, rank=2)
    batched = LoRAAdapter({k: LoRAWeights(torch.stack([w.A] * 2), torch.stack([w.B] * 2))
                           for k, w in single.weights.items()})
    before = _hooks(tiny_llama.model)
    with pytest.raises(IncompatibleAdapterError, match="rows"):
        _logits(tiny_llama.model, _ids(batch=3), batched)
    assert _hooks(tiny_llama.model) == before


def test_nested_adapters_add_up(tiny_llama, make_lora):
    a = make_lora(tiny_llama.model, rank=2, seed=1, std=0.3)
    b = make_lora(tiny_llama.model, rank=3, seed=2, std=0.3, suffixes=("mlp.down_proj", "self_attn.o_proj"))
    ids = _ids()
    with torch.no_grad(), apply_adapter(tiny_llama.model, a), apply_adapter(tiny_llama.model, b):
        nested = tiny_llama.model(ids).logits
    torch.testing.assert_close(nested, _logits(tiny_llama.model, ids, LoRAAdapter.concat([a, b])),
                               rtol=1e-5, atol=1e-5)


def test_hooks_removed_even_on_exception(tiny_llama, make_lora):
    adapter = make_lora(tiny_llama.model, rank=2, std=0.3)
    ids = _ids()
    plain = _logits(tiny_llama.model, ids)
    before = _hooks(tiny_llama.model)
    with pytest.raises(RuntimeError, match="boom"):
        with apply_adapter(tiny_llama.model, adapter):
            assert _hooks(tiny_llama.model) != before
            raise RuntimeError("boom")
    assert _hooks(tiny_llama.model) == before
    assert torch.equal(_logits(tiny_llama.model, ids), plain)
    # and the lock was released: another thread can take it at once
    got = []

    def take_and_release() -> None:
        lock = model_lock(tiny_llama.model)
        got.append(lock.acquire(timeout=5))
        if got[-1]:
            lock.release()

    t = threading.Thread(target=take_and_release)
    t.start()
    t.join()
    assert got == [True]


def test_gradients_reach_a_and_b(tiny_llama, make_lora):
    adapter = make_lora(tiny_llama.model, rank=2, std=0.3)
    for w in adapter.weights.values():
        w.A.requires_grad_(True)
        w.B.requires_grad_(True)
    ids = _ids()
    with apply_adapter(tiny_llama.model, adapter):
        loss = tiny_llama.model(ids, labels=ids).loss
    loss.backward()
    for name, w in adapter.weights.items():
        assert w.A.grad is not None and w.A.grad.abs().sum() > 0, name
        assert w.B.grad is not None and w.B.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in tiny_llama.model.parameters())  # the base stays frozen


def _misnamed(adapter: LoRAAdapter) -> LoRAAdapter:
    name, w = next(iter(adapter.weights.items()))
    return LoRAAdapter({name.replace("down_proj", "no_such_proj"): w})


def _misshaped(adapter: LoRAAdapter) -> LoRAAdapter:
    name, w = next(iter(adapter.weights.items()))
    return LoRAAdapter({name: LoRAWeights(torch.zeros(2, w.A.shape[-1] + 1), torch.zeros(w.B.shape[0], 2))})


def _not_linear(adapter: LoRAAdapter) -> LoRAAdapter:
    name, w = next(iter(adapter.weights.items()))
    return LoRAAdapter({name.rsplit(".", 1)[0]: w})  # the MLP block itself


@pytest.mark.parametrize("spoil", [_misnamed, _misshaped, _not_linear])
def test_incompatible_adapter_raises_and_leaves_no_hooks(tiny_llama, make_lora, spoil):
    bad = spoil(make_lora(tiny_llama.model, rank=2))
    before = _hooks(tiny_llama.model)
    with pytest.raises(IncompatibleAdapterError):
        with apply_adapter(tiny_llama.model, bad):
            pytest.fail("the block must not run")
    assert _hooks(tiny_llama.model) == before


def test_adapter_for_another_architecture_is_incompatible(tiny_llama, tiny_qwen2, make_lora):
    adapter = make_lora(tiny_qwen2.model, rank=2, suffixes=("self_attn.q_proj",))
    shrunk = LoRAAdapter({k: LoRAWeights(w.A[:, :32], w.B) for k, w in adapter.weights.items()})
    with pytest.raises(IncompatibleAdapterError, match="q_proj"):
        _logits(tiny_llama.model, _ids(), shrunk)


# ---------------------------------------------------------------------- threads
def _race(model, adapters, ids, refs, iterations: int = 6) -> list[int]:
    """Two threads each apply their own adapter and compare logits with their reference.

    Inside the ``with`` block each thread sleeps before its forward pass, so without
    the model lock the other thread attaches its hooks in between and the logits mix.
    Returns the number of mismatching forward passes per thread.
    """
    mismatches = [0, 0]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(iterations):
                with torch.no_grad(), apply_adapter(model, adapters[i]):
                    time.sleep(0.005)
                    out = model(ids).logits
                if not torch.allclose(out, refs[i], atol=1e-5):
                    mismatches[i] += 1
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return mismatches


@pytest.fixture
def race_setup(tiny_llama, make_lora):
    adapters = [make_lora(tiny_llama.model, rank=2, seed=s, std=0.5) for s in (11, 12)]
    ids = _ids(batch=1, length=8)
    refs = [_logits(tiny_llama.model, ids, a) for a in adapters]
    assert not torch.allclose(refs[0], refs[1], atol=1e-3)
    return tiny_llama.model, adapters, ids, refs


def test_threads_never_mix_adapters(race_setup):
    before = _hooks(race_setup[0])
    assert _race(*race_setup) == [0, 0]
    assert _hooks(race_setup[0]) == before


def test_race_detector_catches_mixing_without_the_lock(race_setup, monkeypatch):
    """The same race with the lock replaced by a no-op must mix: proof the test above can fail."""
    monkeypatch.setattr(apply_module, "model_lock", lambda model: contextlib.nullcontext())
    before = _hooks(race_setup[0])
    assert sum(_race(*race_setup)) > 0
    assert _hooks(race_setup[0]) == before

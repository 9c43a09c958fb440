"""The adapter value type: composition, compression, size, persistence and PEFT export."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch

from lora_memory.adapter import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    PEFT_CONFIG_NAME,
    LoRAAdapter,
    LoRAWeights,
    compose,
    compose_rows,
)
from lora_memory.apply import apply_adapter
from lora_memory.errors import CorruptEntryError, IncompatibleAdapterError

D_IN, D_OUT = 24, 16


def _pair(rank: int, seed: int, d_in: int = D_IN, d_out: int = D_OUT, batch: tuple[int, ...] = ()) -> LoRAWeights:
    gen = torch.Generator().manual_seed(seed)
    return LoRAWeights(torch.randn(*batch, rank, d_in, generator=gen), torch.randn(*batch, d_out, rank, generator=gen))


def _adapter(ranks: dict[str, int], scaling: float = 1.0, seed: int = 0, **meta) -> LoRAAdapter:
    return LoRAAdapter({m: _pair(r, seed + i) for i, (m, r) in enumerate(ranks.items())}, scaling, dict(meta))


def _low_rank_pair(rank: int, true_rank: int, seed: int) -> LoRAWeights:
    """A rank-``rank`` pair whose product has rank ``true_rank`` (rows of A span a smaller space)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(rank, true_rank, generator=gen) @ torch.randn(true_rank, D_IN, generator=gen)
    return LoRAWeights(A, torch.randn(D_OUT, rank, generator=gen))


# ------------------------------------------------------------------ composition
@pytest.mark.parametrize("scalings", [(1.0, 1.0, 1.0), (2.0, 0.5, 3.0)])
def test_concat_delta_is_sum_of_deltas(scalings):
    parts = [_adapter({"m1": 2 + i, "m2": 3}, scaling=s, seed=10 * i) for i, s in enumerate(scalings)]
    joined = LoRAAdapter.concat(parts)
    assert joined.weights["m1"].rank == sum(2 + i for i in range(3))
    for module in ("m1", "m2"):
        expected = sum(p.delta(module) for p in parts)
        torch.testing.assert_close(joined.delta(module), expected, rtol=1e-5, atol=1e-4)


def test_concat_keeps_modules_present_in_only_some_parts():
    a, b = _adapter({"m1": 2}, seed=1), _adapter({"m1": 3, "m2": 4}, seed=2)
    joined = LoRAAdapter.concat([a, b], metadata={"docs": ["x"]})
    assert joined.weights["m2"].rank == 4 and joined.weights["m1"].rank == 5
    torch.testing.assert_close(joined.delta("m2"), b.delta("m2"))
    assert joined.metadata == {"docs": ["x"]}


def test_concat_rejects_empty_and_mismatched_shapes():
    with pytest.raises(ValueError, match="at least one"):
        LoRAAdapter.concat([])
    other = LoRAAdapter({"m1": _pair(2, 0, d_in=D_IN + 1)})
    with pytest.raises(ValueError, match="m1"):
        LoRAAdapter.concat([_adapter({"m1": 2}), other])


@pytest.mark.parametrize("k", [1, 2, 4])
def test_compose_counts_the_shared_bias_once(k):
    parts = [_adapter({"m": 3}, scaling=2.0, seed=10 * i) for i in range(k)]
    bias = _adapter({"m": 3}, scaling=2.0, seed=99)
    composed = compose(parts, bias, metadata={"n_chunks": k})
    expected = sum(p.delta("m") for p in parts) - (k - 1) * bias.delta("m")
    torch.testing.assert_close(composed.delta("m"), expected, atol=1e-4, rtol=1e-4)
    assert composed.rank == 3 * k + (3 if k > 1 else 0) and composed.metadata == {"n_chunks": k}
    torch.testing.assert_close(compose(parts).delta("m"), sum(p.delta("m") for p in parts), atol=1e-4, rtol=1e-4)


def test_compose_rejects_no_parts():
    with pytest.raises(ValueError, match="at least one"):
        compose([], _adapter({"m": 2}))


@pytest.mark.parametrize("with_bias", [False, True])
def test_compose_rows_gives_each_group_its_composed_delta(with_bias):
    rows = LoRAAdapter({"m": _pair(2, 5, batch=(5,))}, scaling=1.5)
    bias = LoRAAdapter({"m": _pair(2, 6)}, scaling=1.5) if with_bias else None
    groups = [[0, 1, 2], [3], [4, 1]]  # unequal sizes: the shorter groups are zero padded
    out = compose_rows(rows, groups, bias).unbatch()
    singles = rows.unbatch()
    assert len(out) == len(groups)
    for row, group in zip(out, groups):
        expected = sum(singles[i].delta("m") for i in group)
        if bias is not None:
            expected = expected - (len(group) - 1) * bias.delta("m")
        torch.testing.assert_close(row.delta("m"), expected, atol=1e-4, rtol=1e-4)


def test_compose_rows_of_single_chunk_groups_selects_rows():
    rows = LoRAAdapter({"m": _pair(2, 7, batch=(3,))})
    out = compose_rows(rows, [[2], [0]], LoRAAdapter({"m": _pair(2, 8)}))
    torch.testing.assert_close(out.weights["m"].A, rows.weights["m"].A[[2, 0]])


def test_rank_mismatch_inside_a_pair_is_rejected():
    with pytest.raises(ValueError, match="rank mismatch"):
        LoRAWeights(torch.zeros(3, D_IN), torch.zeros(D_OUT, 2))


def test_unbatch_gives_one_adapter_per_row():
    batched = LoRAAdapter({"m": _pair(3, 0, batch=(5,))}, scaling=1.5, metadata={"k": 1})
    assert batched.batched
    rows = batched.unbatch()
    assert len(rows) == 5 and not any(r.batched for r in rows)
    for i, row in enumerate(rows):
        torch.testing.assert_close(row.weights["m"].A, batched.weights["m"].A[i])
        torch.testing.assert_close(row.delta("m"), 1.5 * batched.weights["m"].B[i] @ batched.weights["m"].A[i])


# ------------------------------------------------------------------ compression
@pytest.mark.parametrize("true_rank,budget", [(3, 3), (3, 5), (1, 1), (6, 7)])
def test_compress_is_exact_when_budget_covers_true_rank(true_rank, budget):
    adapter = LoRAAdapter({"m": _low_rank_pair(8, true_rank, seed=true_rank)}, scaling=0.7)
    small = adapter.compress(budget)
    assert small.weights["m"].rank == min(budget, 8)
    torch.testing.assert_close(small.delta("m"), adapter.delta("m"), rtol=1e-4, atol=1e-4)
    assert small.metadata["compressed_to_rank"] == budget


def test_compress_of_duplicated_adapter_halves_rank_exactly():
    a = _adapter({"m": 4}, seed=3)
    doubled = LoRAAdapter.concat([a, a])
    assert doubled.rank == 8
    torch.testing.assert_close(doubled.compress(4).delta("m"), 2 * a.delta("m"), rtol=1e-4, atol=1e-4)


def test_compress_error_is_optimal_and_non_increasing_in_budget():
    adapter = _adapter({"m": 8}, seed=7)
    dense = adapter.delta("m")
    singular = torch.linalg.svdvals(dense)
    errors = []
    for k in range(1, 9):
        err = torch.linalg.matrix_norm(adapter.compress(k).delta("m") - dense).item()
        optimal = singular[k:].pow(2).sum().sqrt().item()  # Eckart-Young: the best any rank-k matrix can do
        assert err == pytest.approx(optimal, rel=1e-3, abs=1e-3)
        errors.append(err)
    assert all(later <= earlier + 1e-4 for earlier, later in zip(errors, errors[1:]))
    assert errors[0] > 0.1 * dense.norm().item() and errors[-1] < 1e-3


def test_compress_rejects_bad_budget_and_batched_adapters():
    with pytest.raises(ValueError, match="max_rank"):
        _adapter({"m": 4}).compress(0)
    with pytest.raises(ValueError, match="unbatch"):
        LoRAAdapter({"m": _pair(3, 0, batch=(2,))}).compress(2)


# ------------------------------------------------------------------------- size
@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_nbytes_counts_a_and_b(dtype, size):
    adapter = _adapter({"m1": 2, "m2": 5}).to(dtype=dtype)
    assert adapter.nbytes() == size * (2 + 5) * (D_IN + D_OUT)


# ------------------------------------------------------------------ persistence
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip(tmp_path, dtype):
    adapter = _adapter({"layers.0.mlp": 3, "layers.1.mlp": 5}, scaling=2.5,
                       base_model="tiny", chunks=[{"doc": "a", "index": 0}]).to(dtype=dtype)
    adapter.save(tmp_path)
    loaded = LoRAAdapter.load(tmp_path)
    assert loaded.scaling == 2.5 and loaded.metadata == adapter.metadata
    assert set(loaded.weights) == set(adapter.weights)
    for name, w in adapter.weights.items():
        assert loaded.weights[name].A.dtype == dtype
        assert torch.equal(loaded.weights[name].A, w.A) and torch.equal(loaded.weights[name].B, w.B)
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert config["format_version"] >= 1 and config["rank"] == 5


def test_state_dict_round_trip():
    adapter = _adapter({"a": 2, "b": 3}, scaling=0.5, doc="x")
    again = LoRAAdapter.from_state_dict(adapter.state_dict(), adapter.config_dict())
    assert again.metadata == {"doc": "x"} and again.scaling == 0.5
    torch.testing.assert_close(again.delta("b"), adapter.delta("b"), rtol=0, atol=0)


def test_save_refuses_batched_adapters(tmp_path):
    with pytest.raises(ValueError, match="unbatch"):
        LoRAAdapter({"m": _pair(2, 0, batch=(2,))}).save(tmp_path)


def _truncate_weights(path):
    data = (path / ADAPTER_WEIGHTS_NAME).read_bytes()
    (path / ADAPTER_WEIGHTS_NAME).write_bytes(data[: len(data) // 2])


def _garbage_weights(path):
    (path / ADAPTER_WEIGHTS_NAME).write_bytes(b"\x00\x01not a safetensors file" * 10)


def _garbage_config(path):
    (path / ADAPTER_CONFIG_NAME).write_text("{not json")


def _config_names_missing_module(path):
    config = json.loads((path / ADAPTER_CONFIG_NAME).read_text())
    config["modules"].append("layers.9.mlp")
    (path / ADAPTER_CONFIG_NAME).write_text(json.dumps(config))


@pytest.mark.parametrize("corrupt", [_truncate_weights, _garbage_weights, _garbage_config,
                                     _config_names_missing_module])
def test_corrupt_files_raise_corrupt_entry_error(tmp_path, corrupt):
    _adapter({"layers.0.mlp": 3}).save(tmp_path)
    corrupt(tmp_path)
    with pytest.raises(CorruptEntryError):
        LoRAAdapter.load(tmp_path)


def test_missing_files_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        LoRAAdapter.load(tmp_path / "nowhere")


# ------------------------------------------------------------------------- PEFT
@pytest.mark.parametrize(
    "suffixes,ranks",
    [
        (("mlp.down_proj",), None),  # the default target, one rank
        (("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj"), None),  # several module kinds
        (("mlp.down_proj",), [2, 4, 6, 4]),  # mixed ranks per layer: rank_pattern / alpha_pattern
    ],
)
def test_export_peft_matches_apply_adapter(tmp_path, tiny_llama, make_lora, suffixes, ranks):
    """PEFT's LoRA forward on the exported directory equals our hook forward (fp32, atol 1e-5)."""
    adapter = make_lora(tiny_llama.model, rank=4, suffixes=suffixes, scaling=1.7, seed=5, std=0.3)
    if ranks is not None:
        for (name, w), r in zip(sorted(adapter.weights.items()), ranks):
            adapter.weights[name] = LoRAWeights(w.A[:r].clone(), w.B[:, :r].clone())
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = tiny_llama.model(ids).logits
        with apply_adapter(tiny_llama.model, adapter):
            ours = tiny_llama.model(ids).logits
    assert (ours - plain).abs().max() > 1e-2  # the adapter does something, so equality below means something

    adapter.export_peft(tmp_path, base_model_name_or_path="tiny-llama")
    config = json.loads((tmp_path / PEFT_CONFIG_NAME).read_text())
    assert bool(config["rank_pattern"]) == (ranks is not None)
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(tiny_llama.model), tmp_path).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_export_peft_rejects_empty_and_batched(tmp_path):
    with pytest.raises(IncompatibleAdapterError):
        LoRAAdapter({}).export_peft(tmp_path)
    with pytest.raises(ValueError, match="unbatch"):
        LoRAAdapter({"m": _pair(2, 0, batch=(2,))}).export_peft(tmp_path)

"""The Doc-to-LoRA hypernetwork on tiny base models of two architectures."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from lora_memory.adapter import LoRAAdapter
from lora_memory.apply import apply_adapter
from lora_memory.chunking import chunk_text
from lora_memory.errors import CorruptEntryError, EmptyDocumentError, IncompatibleAdapterError
from lora_memory.hypernet import DocToLoRA, HypernetConfig
from lora_memory.hypernet.encoding import chat_wrap_ids
from lora_memory.hypernet.pretrained import CONFIG_NAME, WEIGHTS_NAME

TINY = dict(rank=4, key_dim=16, head_rank=16, latent_dim=32, n_latents=4, n_blocks=1, n_heads=4,
            max_chunk_tokens=32)
DOC = ("The lighthouse keeper of Varn Island is called Odile Marchetti. She keeps a tortoise named Pell. "
       "Every spring the island holds a kite festival on the northern cliffs.\n\n"
       "The ferry to Varn leaves at seven in the morning and returns at dusk. Tickets cost four silver marks. "
       "The island's only bakery sells rye bread with caraway seeds.")
VARIANTS = [
    pytest.param("pooling", 2, id="pooling-early"),
    pytest.param("pooling", None, id="pooling-per-layer"),
    pytest.param("perceiver", 2, id="perceiver-early"),
    pytest.param("perceiver", None, id="perceiver-per-layer"),
]


def _hypernet(base, trunk="pooling", input_layer=2, **overrides) -> DocToLoRA:
    torch.manual_seed(0)
    return DocToLoRA.for_base_model(base, **{**TINY, "trunk": trunk, "input_layer": input_layer, **overrides}).eval()


def _perturb(hypernet: DocToLoRA, std: float = 0.05) -> DocToLoRA:
    """Move every weight off its initialisation so generated adapters are not trivially zero."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hypernet.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    hypernet.invalidate_fingerprint()
    return hypernet


def _logits(base, adapter=None) -> torch.Tensor:
    ids = base.tokenizer("Who keeps the lighthouse?", return_tensors="pt").input_ids
    with torch.no_grad(), apply_adapter(base.model, adapter):
        return base.model(ids).logits


def _assert_same_adapter(a: LoRAAdapter, b: LoRAAdapter) -> None:
    assert set(a.weights) == set(b.weights) and a.scaling == b.scaling
    for name in a.weights:
        assert torch.equal(a.weights[name].A, b.weights[name].A), name
        assert torch.equal(a.weights[name].B, b.weights[name].B), name


# ------------------------------------------------------------- shapes, no-op
@pytest.mark.parametrize("trunk,input_layer", VARIANTS)
def test_adapter_shapes_and_noop_at_init(tiny_base, trunk, input_layer):
    hypernet = _hypernet(tiny_base, trunk, input_layer)
    chunks = chunk_text(tiny_base.tokenizer, DOC, hypernet.config.max_chunk_tokens)
    adapters = hypernet.adapters_for_chunks(tiny_base, chunks, batch_size=2)
    assert len(adapters) == len(chunks) > 2
    cfg = tiny_base.model.config
    expected = {f"model.layers.{i}.mlp.down_proj" for i in range(cfg.num_hidden_layers)}
    for chunk, adapter in zip(chunks, adapters):
        assert set(adapter.weights) == expected and not adapter.batched
        assert adapter.metadata["chunk_index"] == chunk.index
        assert adapter.metadata["base_fingerprint"] == tiny_base.fingerprint
        for w in adapter.weights.values():
            assert w.A.shape == (4, cfg.intermediate_size) and w.B.shape == (cfg.hidden_size, 4)
    # a fresh hypernetwork writes a no-op adapter: training starts from the base model
    plain = _logits(tiny_base)
    assert torch.equal(_logits(tiny_base, hypernet.internalize(tiny_base, DOC)), plain)
    # once its weights move, the adapter does something
    assert not torch.allclose(_logits(tiny_base, _perturb(hypernet).internalize(tiny_base, DOC)), plain, atol=1e-4)


def test_zero_b_scaler_init_is_a_noop_too(tiny_llama):
    hypernet = _hypernet(tiny_llama, head_init="zero_b_scaler")
    assert torch.equal(_logits(tiny_llama, hypernet.internalize(tiny_llama, DOC)), _logits(tiny_llama))


def test_target_layers_subset(tiny_llama):
    adapter = _hypernet(tiny_llama, input_layer=None, target_layers=[1, 3]).internalize(tiny_llama, DOC)
    assert set(adapter.weights) == {"model.layers.1.mlp.down_proj", "model.layers.3.mlp.down_proj"}


def test_batching_does_not_change_adapters(tiny_llama):
    hypernet = _perturb(_hypernet(tiny_llama))
    chunks = chunk_text(tiny_llama.tokenizer, DOC, hypernet.config.max_chunk_tokens)
    one_by_one = hypernet.adapters_for_chunks(tiny_llama, chunks, batch_size=1)
    together = hypernet.adapters_for_chunks(tiny_llama, chunks, batch_size=len(chunks))  # padded batch
    for a, b in zip(one_by_one, together):
        for name in a.weights:
            torch.testing.assert_close(a.weights[name].A, b.weights[name].A, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(a.weights[name].B, b.weights[name].B, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ encoding
def _wrapped(base, token_ids: list[int]) -> torch.Tensor:
    before, after = chat_wrap_ids(base.tokenizer)
    return torch.tensor([before + token_ids + after])


@pytest.mark.parametrize("input_layer", [0, 2, 4, None])
def test_encode_equals_hidden_states_of_a_full_pass(tiny_base, input_layer):
    hypernet = _hypernet(tiny_base, input_layer=input_layer)
    rows = [c.token_ids for c in chunk_text(tiny_base.tokenizer, DOC, 32)[:3]]
    rows[1] = rows[1][:7]  # rows of different lengths: padding must not leak into real positions
    states, mask, *_ = hypernet.encode(tiny_base, rows)
    layers = [input_layer] if input_layer is not None else hypernet.config.layers
    assert states.shape[:2] == (3, len(layers))
    for i, row in enumerate(rows):
        ids = _wrapped(tiny_base, row)
        assert int(mask[i].sum()) == ids.shape[1]
        with torch.no_grad():
            full = tiny_base.model(ids, output_hidden_states=True).hidden_states
        for s, layer in enumerate(layers):
            torch.testing.assert_close(states[i, s, : ids.shape[1]], full[layer][0], rtol=1e-4, atol=1e-5)


def test_early_exit_runs_only_the_needed_layers(tiny_llama):
    hypernet = _hypernet(tiny_llama, input_layer=1)
    calls = []
    handles = [layer.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
               for k, layer in enumerate(tiny_llama.model.model.layers)]
    try:
        hypernet.encode(tiny_llama, [[1, 2, 3]])
    finally:
        for h in handles:
            h.remove()
    assert calls == [0]  # layer 0 ran; layer 1's input was captured and the pass stopped


# --------------------------------------------------------------- composition
@pytest.mark.parametrize("dedupe_bias", [False, True])
def test_internalize_multi_chunk_rank_and_delta(tiny_llama, dedupe_bias):
    hypernet = _perturb(_hypernet(tiny_llama, max_chunk_tokens=16, dedupe_bias=dedupe_bias))
    chunks = chunk_text(tiny_llama.tokenizer, DOC, 16)
    k, r = len(chunks), hypernet.config.rank
    assert k > 3
    adapter = hypernet.internalize(tiny_llama, DOC)
    assert adapter.metadata["n_chunks"] == k
    assert adapter.rank == (k + 1) * r if dedupe_bias else k * r
    parts = hypernet.adapters_for_chunks(tiny_llama, chunks)
    bias = hypernet.bias_adapter()
    for name in adapter.weights:
        expected = sum(p.delta(name) for p in parts)
        if dedupe_bias:  # the document-independent term counts once, as in a one-chunk document
            expected = expected - (k - 1) * bias.delta(name).detach()
        torch.testing.assert_close(adapter.delta(name), expected, rtol=1e-4, atol=1e-4)


def test_single_chunk_document_has_rank_r(tiny_llama):
    adapter = _hypernet(tiny_llama).internalize(tiny_llama, "Pell is a tortoise.")
    assert adapter.rank == 4 and adapter.metadata["n_chunks"] == 1


def test_empty_document_raises(tiny_llama):
    with pytest.raises(EmptyDocumentError):
        _hypernet(tiny_llama).internalize(tiny_llama, "  \n ")


def test_gradients_reach_every_hypernet_weight(tiny_llama):
    """The training path: base states -> hypernet -> hooks -> loss, gradients back into the hypernet."""
    hypernet = _perturb(_hypernet(tiny_llama, trunk="perceiver", input_layer=None)).train()
    chunks = chunk_text(tiny_llama.tokenizer, DOC, 32)[:2]
    states, mask, *_ = hypernet.encode(tiny_llama, [c.token_ids for c in chunks])
    adapter = hypernet(states, mask)  # batched: one adapter per chunk
    questions = tiny_llama.tokenizer(["Who keeps it?", "When is the ferry?"], padding=True,
                                     return_tensors="pt").input_ids
    with apply_adapter(tiny_llama.model, adapter):
        loss = tiny_llama.model(questions, labels=questions).loss
    loss.backward()
    missing = [n for n, p in hypernet.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


# ---------------------------------------------------------------- persistence
@pytest.mark.parametrize("trunk,input_layer", VARIANTS)
def test_save_load_round_trip_gives_identical_adapters(tmp_path, tiny_base, trunk, input_layer):
    hypernet = _perturb(_hypernet(tiny_base, trunk, input_layer))
    hypernet.save_pretrained(tmp_path)
    loaded = DocToLoRA.from_pretrained(tmp_path, base=tiny_base)
    assert loaded.config == hypernet.config
    assert loaded.fingerprint == hypernet.fingerprint
    assert not loaded.training
    _assert_same_adapter(loaded.internalize(tiny_base, DOC), hypernet.internalize(tiny_base, DOC))


def test_loading_against_another_base_is_incompatible(tmp_path, tiny_llama, tiny_qwen2, make_tiny_llama):
    _hypernet(tiny_llama).save_pretrained(tmp_path)
    for other in (make_tiny_llama(5), tiny_qwen2):
        with pytest.raises(IncompatibleAdapterError, match="fingerprint"):
            DocToLoRA.from_pretrained(tmp_path, base=other)
    loaded = DocToLoRA.from_pretrained(tmp_path)  # no base given: no check
    with pytest.raises(IncompatibleAdapterError):
        loaded.internalize(tiny_qwen2, DOC)


def _garbage_weights(path):
    (path / WEIGHTS_NAME).write_bytes(b"definitely not safetensors" * 8)


def _truncated_weights(path):
    data = (path / WEIGHTS_NAME).read_bytes()
    (path / WEIGHTS_NAME).write_bytes(data[: len(data) // 3])


def _garbage_config(path):
    (path / CONFIG_NAME).write_text("{\"trunk\": ")


def _config_for_other_weights(path):
    config = json.loads((path / CONFIG_NAME).read_text())
    config["rank"] = 6  # the saved tensors are rank 4
    (path / CONFIG_NAME).write_text(json.dumps(config))


def _invalid_config_value(path):
    config = json.loads((path / CONFIG_NAME).read_text())
    config["trunk"] = "transformer"
    (path / CONFIG_NAME).write_text(json.dumps(config))


@pytest.mark.parametrize("corrupt", [_garbage_weights, _truncated_weights, _garbage_config,
                                     _config_for_other_weights, _invalid_config_value])
def test_corrupt_checkpoint_raises_corrupt_entry_error(tmp_path, tiny_llama, corrupt):
    _hypernet(tiny_llama).save_pretrained(tmp_path)
    corrupt(tmp_path)
    with pytest.raises(CorruptEntryError):
        DocToLoRA.from_pretrained(tmp_path, base=tiny_llama)


def test_missing_checkpoint_raises_file_not_found(tmp_path, tiny_llama):
    with pytest.raises(FileNotFoundError):
        DocToLoRA.from_pretrained(tmp_path / "nowhere", base=tiny_llama)


def test_fingerprint_tracks_weights(tiny_llama):
    a, b = _hypernet(tiny_llama), _hypernet(tiny_llama)
    assert a.fingerprint == b.fingerprint
    before = b.fingerprint
    _perturb(b)
    assert b.fingerprint != before


# --------------------------------------------------------------------- config
def test_config_round_trip_and_unknown_keys(tiny_llama, caplog):
    config = _hypernet(tiny_llama, trunk="perceiver").config
    assert HypernetConfig.from_dict(config.to_dict()) == config
    with caplog.at_level(logging.WARNING):
        again = HypernetConfig.from_dict({**config.to_dict(), "added_in_v9": 1})
    assert again == config and "added_in_v9" in caplog.text


@pytest.mark.parametrize("overrides,field", [
    ({"input_layer": 8}, "input_layer"),  # the default early exit (layer 8) needs more than 4 layers
    ({"target_layers": [0, 9]}, "layer 9"),
    ({"trunk": "perceiver", "latent_dim": 30, "n_heads": 4}, "latent_dim"),
    ({"rank": 0}, "rank"),
])
def test_invalid_configs_name_the_field(tiny_llama, overrides, field):
    with pytest.raises((ValueError, IncompatibleAdapterError), match=field):
        DocToLoRA.for_base_model(tiny_llama, **{**TINY, "input_layer": 2, **overrides})


def test_pooling_trunk_key_rows_are_each_b_rows_weights_one_token_back(tiny_llama):
    from lora_memory.hypernet.trunks import PoolingTrunk

    torch.manual_seed(0)
    hypernet = DocToLoRA.for_base_model(tiny_llama, target_layers=[1, 2], input_layer=1, rank=4, head_rank=8,
                                        key_dim=16, activation_keys=True)
    trunk = hypernet.trunk
    assert isinstance(trunk, PoolingTrunk)
    states, mask, *_ = hypernet.encode(tiny_llama, [[5, 6, 7, 8, 9], [10, 11, 12]])
    N, T = mask.shape
    positions = torch.eye(T).expand(N, 2, T, T)  # acts = one-hot positions: a key row is a weight per token
    _, keys = trunk(states, mask, positions)
    x = trunk.norm(states)
    q = trunk.queries.reshape(1, 2, -1, trunk.queries.shape[-1]).expand(N, -1, -1, -1)
    _, attn = trunk._pool(q, trunk.key(x), x, mask)
    b_weights = attn[:, :, 4:]  # the B half of the 2r queries
    assert keys is not None
    torch.testing.assert_close(keys[..., :-1], b_weights[..., 1:])
    assert torch.all(keys[..., -1] == 0)  # no token after the last one

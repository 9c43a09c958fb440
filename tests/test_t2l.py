"""Text-to-LoRA: shapes, no-op init, persistence, base checks, the task set, training and resume."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lora_memory import tasks as tasks_module
from lora_memory.adapter import LoRAAdapter, LoRAWeights
from lora_memory.apply import apply_adapter
from lora_memory.base import LoadedModel, model_fingerprint
from lora_memory.checkpoints import default_t2l_dir
from lora_memory.errors import CorruptEntryError, IncompatibleAdapterError, ModelNotFoundError
from lora_memory.evaluation.scoring import contains
from lora_memory.evaluation.t2l import (
    DOC_BEGIN,
    DOC_END,
    EVAL_SEED,
    evaluate_task,
    greedy_answers,
    write_doc,
)
from lora_memory.hypernet.pretrained import WEIGHTS_NAME
from lora_memory.hypernet.t2l import T2LConfig, TextToLoRA
from lora_memory.hypernet.task_encoders import MiniLMEncoder
from lora_memory.tasks import task_adapter
from lora_memory.training.t2l import train as t2l_train
from lora_memory.training.t2l.data import TASKS, task_batches, task_by_name, task_split
from lora_memory.training.t2l.train import T2LTrainConfig, delta_distance, train

VARIANTS = ["L", "M", "S"]
TARGETS = ["self_attn.q_proj", "self_attn.v_proj"]


def _t2l(base, variant="L", seed=0, **overrides) -> TextToLoRA:
    torch.manual_seed(seed)
    return TextToLoRA.for_base_model(base, variant=variant, task_encoder="base", hidden_dim=32, **overrides)


def _perturb(t2l: TextToLoRA, seed: int = 1) -> TextToLoRA:
    """Give the zero-initialised heads random weights, so descriptions matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in t2l.heads:
            head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.05)
    t2l.invalidate_fingerprint()
    return t2l


def _logits(base, adapter=None) -> torch.Tensor:
    ids = torch.randint(0, 2000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), apply_adapter(base.model, adapter):
        return base.model(ids).logits


# ------------------------------------------------------------------- model
@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_per_variant(tiny_base, variant):
    t2l = _t2l(tiny_base, variant, target_layers=[0, 2])
    adapter = t2l(torch.randn(3, t2l.config.task_embed_dim))
    cfg = tiny_base.model.config
    kv_dim = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    assert sorted(adapter.weights) == sorted(f"model.layers.{i}.{s}" for i in (0, 2) for s in TARGETS)
    for name, w in adapter.weights.items():
        d_out = cfg.hidden_size if "q_proj" in name else kv_dim
        assert w.A.shape == (3, 8, cfg.hidden_size) and w.B.shape == (3, d_out, 8)
    assert adapter.scaling == 2.0


def test_variants_differ_in_size(tiny_llama):
    sizes = {v: sum(p.numel() for p in _t2l(tiny_llama, v).parameters()) for v in VARIANTS}
    assert sizes["L"] > sizes["M"] > sizes["S"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_fresh_t2l_is_a_standard_lora_init(tiny_base, variant):
    """B == 0 (the model's output is unchanged) and A is a PEFT-style uniform init, for any description."""
    t2l = _t2l(tiny_base, variant)
    adapters = t2l.task_adapters(tiny_base, ["Answer in capitals.", "Translate into French."])
    for adapter in adapters:
        for w in adapter.weights.values():
            bound = 1 / w.A.shape[-1] ** 0.5
            assert torch.count_nonzero(w.B) == 0
            assert 0 < w.A.abs().max() <= bound
        assert torch.equal(_logits(tiny_base, adapter), _logits(tiny_base))


@pytest.mark.parametrize("variant", VARIANTS)
def test_descriptions_steer_the_adapter(tiny_llama, variant):
    t2l = _perturb(_t2l(tiny_llama, variant))
    a, b = t2l.task_adapters(tiny_llama, ["Answer in capitals.", "Give the plural of the noun."])
    name = next(iter(a.weights))
    assert not torch.allclose(a.delta(name), b.delta(name))
    assert not torch.allclose(_logits(tiny_llama, a), _logits(tiny_llama, b))
    assert a.metadata["task"] == "Answer in capitals." and a.metadata["t2l_fingerprint"] == t2l.fingerprint


def test_empty_description_is_rejected(tiny_llama):
    with pytest.raises(ValueError, match="non-empty"):
        _t2l(tiny_llama).task_adapters(tiny_llama, ["fine", "  "])


def test_missing_target_module_fails_clearly(tiny_llama):
    with pytest.raises(IncompatibleAdapterError, match="no module"):
        _t2l(tiny_llama, target_modules=["self_attn.nope"])


# ------------------------------------------------------------- persistence
@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip(tiny_llama, tmp_path, variant):
    t2l = _perturb(_t2l(tiny_llama, variant))
    t2l.save_pretrained(tmp_path)
    loaded = TextToLoRA.from_pretrained(tmp_path, base=tiny_llama)
    assert loaded.config == t2l.config and loaded.fingerprint == t2l.fingerprint
    d = "Reverse the order of the words."
    a, b = t2l.task_adapter(tiny_llama, d), loaded.task_adapter(tiny_llama, d)
    assert all(torch.equal(a.weights[k].A, b.weights[k].A) and torch.equal(a.weights[k].B, b.weights[k].B)
               for k in a.weights)


def test_config_round_trip_drops_unknown_keys():
    cfg = T2LConfig(variant="S", target_layers=[1, 3], rank=4)
    assert T2LConfig.from_dict({**cfg.to_dict(), "added_later": 1}) == cfg


def test_loading_for_another_base_raises(make_tiny_llama, tiny_llama, tmp_path):
    _t2l(tiny_llama).save_pretrained(tmp_path)
    with pytest.raises(IncompatibleAdapterError, match="fingerprint"):
        TextToLoRA.from_pretrained(tmp_path, base=make_tiny_llama(7))
    with pytest.raises(IncompatibleAdapterError):
        task_adapter(make_tiny_llama(7), "Answer in capitals.", t2l=TextToLoRA.from_pretrained(tmp_path))


def test_corrupt_checkpoint_raises(tiny_llama, tmp_path):
    _t2l(tiny_llama).save_pretrained(tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(CorruptEntryError):
        TextToLoRA.from_pretrained(tmp_path)


def test_default_t2l_missing_checkpoint_is_reported(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(tasks_module, "default_t2l_dir", lambda: tmp_path / "absent")
    with pytest.raises(ModelNotFoundError, match=r"training\.t2l\.train"):
        task_adapter(tiny_llama, "Answer in capitals.")
    with pytest.raises(ValueError, match="empty"):
        task_adapter(tiny_llama, " ", t2l=_t2l(tiny_llama))


# ---------------------------------------------------------------- task set
def test_task_set_is_well_formed():
    train_tasks, held_out = task_split()
    assert len(train_tasks) >= 20 and len(held_out) >= 8
    assert len({t.name for t in TASKS}) == len(TASKS)
    seen = {d for t in train_tasks for d in t.train_descriptions}
    for task in TASKS:
        assert len(task.descriptions) >= 4
        assert not seen & set(task.eval_descriptions), task.name  # evaluation wordings are never trained on
        examples = task.examples(20, seed=3)
        assert examples == task.examples(20, seed=3)
        assert all(task.correct(y, y) for _, y in examples)
        assert len({x for x, _ in examples}) > 1


@pytest.mark.parametrize(("name", "prediction", "answer", "ok"), [
    ("movie_sentiment", "Positive.", "positive", True),
    ("json_person", '{"age": 30, "name": "Ann"}', '{"name": "Ann", "age": 30}', True),
    ("json_person", "name: Ann", '{"name": "Ann", "age": 30}', False),
    ("uppercase", "the cat", "THE CAT", False),
])
def test_checkers(name, prediction, answer, ok):
    assert task_by_name(name).correct(prediction, answer) is ok


def test_contains_matches_whole_words_only():
    assert contains("The answer is 42.", "42") and not contains("142", "42")


def test_batches_are_a_function_of_seed_and_step(tokenizer):
    train_tasks, _ = task_split()
    stream = task_batches(tokenizer, train_tasks, 4, seed=5)
    first, second = next(stream), next(stream)
    resumed = next(task_batches(tokenizer, train_tasks, 4, seed=5, start=1))
    assert torch.equal(second.batch.input_ids, resumed.batch.input_ids) and second.tasks == resumed.tasks
    assert not torch.equal(first.batch.labels, second.batch.labels)
    for row, ids in zip(first.batch.labels, first.batch.input_ids):  # loss only on the answer + end of turn
        answer = row[row != -100]
        assert answer[-1] == tokenizer.eos_token_id and torch.equal(answer, ids[row != -100])


# ------------------------------------------------------------------ training
def _train_config(tmp_path, **overrides) -> T2LTrainConfig:
    settings = dict(out_dir=str(tmp_path), steps=6, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=100,
                    threads=None, lora_steps=3, t2l=T2LConfig(task_encoder="base", hidden_dim=32, dropout=0.1))
    return T2LTrainConfig(**{**settings, **overrides})


def _log(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / t2l_train.LOG_NAME).read_text().splitlines()]


@pytest.fixture(scope="module")
def steerable_llama(tokenizer) -> LoadedModel:
    """A tiny llama with larger weights: the default 0.02 init keeps every logit near 0, so no LoRA can fit."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    return LoadedModel(model, tokenizer, "tiny-steerable", model_fingerprint(model))


def test_sft_training_reduces_the_loss_on_a_toy_task(steerable_llama, tmp_path):
    cfg = _train_config(tmp_path, tasks=["movie_sentiment"], steps=40, lr=3e-3, warmup_steps=5)
    train(cfg, base=steerable_llama, progress=False)
    losses = [r["loss"] for r in _log(tmp_path)]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 5.0  # measured over seeds 0-2: about 12 -> 1-2.5
    assert (tmp_path / t2l_train.FINAL_DIR / WEIGHTS_NAME).is_file()


def test_resume_is_exact(tiny_llama, tmp_path):
    straight = train(_train_config(tmp_path / "a"), base=tiny_llama, progress=False)
    train(_train_config(tmp_path / "b"), base=tiny_llama, progress=False, until=3)
    assert not (tmp_path / "b" / t2l_train.FINAL_DIR).exists()
    resumed = train(_train_config(tmp_path / "b"), base=tiny_llama, progress=False)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    assert [r["loss"] for r in _log(tmp_path / "a")] == [r["loss"] for r in _log(tmp_path / "b")]


def test_delta_distance_matches_dense_computation():
    gen = torch.Generator().manual_seed(0)
    make = lambda: LoRAAdapter({"m": LoRAWeights(torch.randn(2, 3, 7, generator=gen),  # noqa: E731
                                                 torch.randn(2, 5, 3, generator=gen))}, scaling=2.0)
    a, b = make(), make()
    dense = lambda x: 2.0 * x.weights["m"].B @ x.weights["m"].A  # noqa: E731
    expected = ((dense(a) - dense(b)).pow(2).sum((-1, -2)) / dense(b).pow(2).sum((-1, -2))).mean()
    assert torch.allclose(delta_distance(a, b), expected, rtol=1e-4)
    assert delta_distance(b, b).abs().item() < 1e-5


def test_stacked_targets_keep_each_tasks_delta(make_lora, tiny_llama):
    parts = [make_lora(tiny_llama.model, seed=s) for s in (0, 1)]
    stacked = LoRAAdapter.stack(parts)  # the T2L loss's targets: one row per task, even for one task
    assert stacked.batched and all(torch.equal(u.weights[k].A, p.weights[k].A)
                                   for u, p in zip(stacked.unbatch(), parts) for k in p.weights)
    for row, part in zip(stacked.unbatch(), parts):
        for k in part.weights:
            torch.testing.assert_close(row.delta(k), part.delta(k))
    assert LoRAAdapter.stack(parts[:1]).batched
    with pytest.raises(ValueError, match="at least one"):
        LoRAAdapter.stack([None])


def test_recon_training_reduces_the_distance(tiny_llama, tmp_path):
    cfg = _train_config(tmp_path, mode="recon", steps=30, lr=1e-2, warmup_steps=3)
    train(cfg, base=tiny_llama, progress=False)
    losses = [r["loss"] for r in _log(tmp_path)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert len(list((tmp_path / t2l_train.TASK_LORA_DIR).iterdir())) == len(task_split()[0])


def test_greedy_answers_batched_equal_one_by_one(tiny_llama):
    prompts = ["mouse", "the brave cat sleeps now"]
    together = greedy_answers(tiny_llama, prompts, None, max_new_tokens=5)
    assert together == [greedy_answers(tiny_llama, [p], None, max_new_tokens=5)[0] for p in prompts]


def test_greedy_answers_with_a_batched_adapter_equal_one_by_one(tiny_llama):
    t2l = _perturb(_t2l(tiny_llama))
    descriptions, prompts = ["Answer in capitals.", "Give the plural."], ["mouse", "the cat"]
    batched = t2l(t2l.embed(tiny_llama, descriptions)).to(dtype=torch.float32)
    together = greedy_answers(tiny_llama, prompts, batched, max_new_tokens=5)
    singles = [greedy_answers(tiny_llama, [p], t2l.task_adapter(tiny_llama, d), max_new_tokens=5)[0]
               for p, d in zip(prompts, descriptions)]
    assert together == singles


def test_evaluate_task_scores_every_condition(tiny_llama):
    task = task_by_name("singularise")
    res = evaluate_task(tiny_llama, task, task.eval_descriptions, {"x": _t2l(tiny_llama)}, 4, lora_steps=2)
    assert set(res) == {"base", "prompt", "t2l:x", "lora"}
    assert all(0.0 <= v <= 1.0 for r in res.values() for v in r.values())


def test_write_doc_keeps_hand_written_text(tmp_path):
    doc = tmp_path / "t2l.md"
    write_doc(doc, f"{DOC_BEGIN}\nold\n{DOC_END}")
    doc.write_text("# Title\n\nnotes before\n\n" + doc.read_text().split("\n\n", 1)[1] + "\nnotes after\n")
    write_doc(doc, f"{DOC_BEGIN}\nnew\n{DOC_END}")
    text = doc.read_text()
    assert "notes before" in text and "notes after" in text and "new" in text and "old" not in text


# -------------------------------------------------------------- real models
@pytest.mark.slow
def test_minilm_encoder_embeds_meaning():
    enc = MiniLMEncoder()
    e = enc.encode(["Answer in uppercase letters.", "Reply using only capital letters.", "Translate into French."])
    assert e.shape == (3, 384) and torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["product_sentiment", "extract_number"])
def test_shipped_t2l_steers_the_embedded_model_on_a_held_out_task(embedded_base, name):
    """Held-out tasks where docs/t2l.md measured T2L at 1.00 exact match and the bare model at 0.00."""
    if not (default_t2l_dir() / "config.json").is_file():
        pytest.skip("no T2L checkpoint ships in this checkout")
    task = task_by_name(name)
    assert task.held_out
    examples = task.examples(8, EVAL_SEED)
    inputs, answers = [x for x, _ in examples], [y for _, y in examples]
    adapter = task_adapter(embedded_base, task.eval_descriptions[0])
    hits = lambda preds: sum(task.correct(p, a) for p, a in zip(preds, answers))  # noqa: E731
    assert hits(greedy_answers(embedded_base, inputs, adapter, max_new_tokens=12)) >= 6
    assert hits(greedy_answers(embedded_base, inputs, None, max_new_tokens=12)) <= 2

"""Training pipeline on a tiny random model: data, composition, loss, resume, evaluation, baseline."""

from __future__ import annotations

import random

import pytest
import torch

from lora_memory.adapter import LoRAAdapter, compose_rows
from lora_memory.evaluation.d2l import EvalConfig, density_markdown, evaluate_density, evaluate_hypernet
from lora_memory.evaluation.scoring import contains, exact_match
from lora_memory.hypernet import DocToLoRA
from lora_memory.hypernet.encoding import chat_wrap_ids
from lora_memory.training.d2l.baseline import distill_document
from lora_memory.training.d2l.batching import chunk_examples, qa_batch
from lora_memory.training.d2l.config import Stage, TaskSpec, TrainConfig
from lora_memory.training.d2l.data import facts_example, make_example, needle_example
from lora_memory.training.d2l.trainer import Trainer, evaluate, sample_examples
from lora_memory.training.objectives import answer_loss

TINY_HYPERNET = {"target_layers": [1, 2], "input_layer": 1, "max_chunk_tokens": 32, "rank": 4,
                 "head_rank": 8, "key_dim": 16}


def _config(tmp_path, steps=4, **kw) -> TrainConfig:
    stage = Stage(name="mix", steps=steps, batch_size=2,
                  tasks=[TaskSpec(kind="needle", params={"min_tokens": 10, "max_tokens": 60}),
                         TaskSpec(kind="facts")])
    return TrainConfig(hypernet=TINY_HYPERNET, stages=[stage], warmup_steps=1, eval_every=2, eval_examples=2,
                       checkpoint_every=2, out_dir=str(tmp_path / "run"), **kw)


def test_data_is_deterministic_and_split():
    a = needle_example(random.Random(3), "train", 50, 80)
    b = needle_example(random.Random(3), "train", 50, 80)
    assert a == b and a.qa[0].answer in a.document
    train = {facts_example(random.Random(i), "train").info["entity"] for i in range(200)}
    held = {facts_example(random.Random(i), "heldout").info["entity"] for i in range(200)}
    assert train.isdisjoint(held)
    with pytest.raises(ValueError, match="unknown task kind"):
        make_example(random.Random(0), "poetry", "train")


def test_facts_answers_appear_in_document():
    ex = facts_example(random.Random(7), "heldout", n_facts=(5, 5))
    assert len(ex.qa) == 5
    assert all(qa.answer in ex.document for qa in ex.qa)


def test_training_composition_counts_the_hypernet_bias_once(tiny_llama):
    torch.manual_seed(0)
    hypernet = DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET)
    with torch.no_grad():  # make the bias term non-zero so the correction matters
        hypernet.heads.bias_b.normal_()
        hypernet.heads.map_b.second.normal_()
    rng = random.Random(0)
    examples = [needle_example(rng, "train", 80, 90), needle_example(rng, "train", 5, 5)]
    token_ids, groups = chunk_examples(tiny_llama.tokenizer, examples, 32)
    assert len(groups[0]) > 1 and len(groups[1]) == 1
    with torch.no_grad():
        states, mask, *_ = hypernet.encode(tiny_llama, token_ids)
        per_chunk = hypernet(states, mask)
        rows = compose_rows(per_chunk, groups, hypernet.bias_adapter()).unbatch()
        singles = per_chunk.unbatch()
        # K chunks equal the sum of their deltas minus (K-1) bias; one chunk is its own adapter
        k = len(groups[0])
        bias = hypernet.bias_adapter()
        name = next(iter(bias.weights))
        expected = sum(singles[i].delta(name) for i in groups[0]) - (k - 1) * bias.delta(name)
        torch.testing.assert_close(rows[0].delta(name), expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(rows[1].delta(name), singles[groups[1][0]].delta(name))


def test_answer_loss_is_zero_gradient_free_at_init_and_learns(tiny_llama):
    torch.manual_seed(0)
    hypernet = DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET)
    examples = [needle_example(random.Random(i), "train") for i in range(2)]
    batch = qa_batch(tiny_llama.tokenizer, examples)
    token_ids, groups = chunk_examples(tiny_llama.tokenizer, examples, 32)
    states, mask, *_ = hypernet.encode(tiny_llama, token_ids)
    adapter = compose_rows(hypernet(states, mask), groups)
    with_adapter = answer_loss(tiny_llama.model, batch, adapter).loss
    without = answer_loss(tiny_llama.model, batch, None).loss
    torch.testing.assert_close(with_adapter, without)  # no-op at initialisation
    with_adapter.backward()
    grads = [p.grad for p in hypernet.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert grads, "no gradient reached the hypernetwork"


def test_train_resume_is_exact(tmp_path, tiny_llama):
    straight = Trainer(_config(tmp_path / "a"), base=tiny_llama)
    straight.run()
    first = Trainer(_config(tmp_path / "b"), base=tiny_llama)
    first.run(max_steps=2)
    resumed = Trainer(_config(tmp_path / "b"), base=tiny_llama)
    assert resumed.step == 2
    resumed.run()
    for (name, p), q in zip(straight.hypernet.state_dict().items(), resumed.hypernet.state_dict().values()):
        torch.testing.assert_close(p, q, msg=f"{name} differs after resume")
    log = (tmp_path / "a" / "run" / "log.jsonl").read_text().splitlines()
    assert len(log) == 4 and "eval_exact" in log[1] and "adapter_spread" in log[1]
    assert (tmp_path / "a" / "run" / "hypernet" / "model.safetensors").is_file()


def test_evaluate_reports_exact_per_task_family(tmp_path, tiny_llama):
    config = _config(tmp_path).model_copy(update={"eval_examples": 6})
    hypernet = DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET)
    record = evaluate(hypernet, tiny_llama, config, step=0)
    kinds = [ex.kind for ex in sample_examples(config.stages[0], config.seed, 0, "heldout", 6)]
    assert set(kinds) == {"needle", "facts"}
    assert {f"eval_exact_{k}" for k in kinds} == {k for k in record if k.startswith("eval_exact_")}
    weighted = sum(record[f"eval_exact_{k}"] * kinds.count(k) for k in set(kinds)) / len(kinds)
    assert record["eval_exact"] == pytest.approx(weighted)


def test_widened_heads_generate_the_same_adapters_and_train_from_a_checkpoint(tmp_path, tiny_llama):
    torch.manual_seed(0)
    hypernet = DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET)
    with torch.no_grad():  # a trained-looking map (the second factor starts at zero)
        hypernet.heads.map_b.second.normal_()
    states, mask, *_ = hypernet.encode(tiny_llama, [[5, 6, 7, 8], [9, 10, 11, 12]])
    before = hypernet(states, mask)
    hypernet.save_pretrained(tmp_path / "init")
    hypernet.widen_heads(16)
    after = hypernet(states, mask)
    assert hypernet.config.head_rank == 16 and hypernet.heads.map_a.first.shape[-1] == 16
    for name, w in before.weights.items():
        torch.testing.assert_close(after.weights[name].A, w.A)
        torch.testing.assert_close(after.weights[name].B, w.B)
    with pytest.raises(ValueError, match="larger rank"):
        hypernet.widen_heads(8)
    config = _config(tmp_path, steps=2).model_copy(update={"init_from": str(tmp_path / "init"),
                                                           "widen_head_rank": 16})
    trainer = Trainer(config, base=tiny_llama)
    trainer.run()
    saved = DocToLoRA.from_pretrained(tmp_path / "run" / "hypernet", base=tiny_llama)
    assert saved.config.head_rank == 16
    assert saved.heads.map_b.second[:, 8:].abs().sum() > 0  # the new directions learned
    with pytest.raises(ValueError, match="set init_from"):
        TrainConfig(stages=config.stages, widen_head_rank=16)


def test_query_hops_start_as_one_pass_learn_and_load(tmp_path, tiny_llama):
    torch.manual_seed(0)
    hypernet = DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET)
    with torch.no_grad():
        hypernet.heads.map_b.second.normal_()
    states, mask, *_ = hypernet.encode(tiny_llama, [[5, 6, 7, 8], [9, 10, 11, 12]])
    before = hypernet(states, mask)
    hypernet.save_pretrained(tmp_path / "init")
    after = hypernet.add_query_hops(3)(states, mask)
    assert hypernet.config.query_hops == 3 and len(hypernet.trunk.hops) == 2
    for name, w in before.weights.items():
        torch.testing.assert_close(after.weights[name].A, w.A)
        torch.testing.assert_close(after.weights[name].B, w.B)
    with pytest.raises(ValueError, match="only add"):
        hypernet.add_query_hops(3)
    with torch.no_grad():  # trained later passes change what the queries pool
        for hop in hypernet.trunk.hops:
            hop.weight.normal_()
    moved = hypernet(states, mask)
    assert any(not torch.allclose(moved.weights[n].B, w.B) for n, w in before.weights.items())  # map_b is perturbed
    config = _config(tmp_path, steps=2).model_copy(update={"init_from": str(tmp_path / "init"), "add_query_hops": 2})
    Trainer(config, base=tiny_llama).run()
    saved = DocToLoRA.from_pretrained(tmp_path / "run" / "hypernet", base=tiny_llama)
    assert saved.config.query_hops == 2 and saved.trunk.hops[0].weight.abs().sum() > 0  # the new pass learned
    with pytest.raises(ValueError, match="set init_from"):
        TrainConfig(stages=config.stages, add_query_hops=2)
    perceiver = DocToLoRA.for_base_model(tiny_llama, **{**TINY_HYPERNET, "trunk": "perceiver"})
    with pytest.raises(ValueError, match="pooling-trunk"):
        perceiver.add_query_hops(2)


def test_activation_keys_capture_the_target_inputs_start_at_zero_learn_and_load(tmp_path, tiny_llama):
    torch.manual_seed(0)
    hypernet = DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET)
    with torch.no_grad():
        hypernet.heads.map_b.second.normal_()
    rows = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]
    before = hypernet(*hypernet.encode(tiny_llama, rows))
    hypernet.save_pretrained(tmp_path / "init")
    hypernet.add_activation_keys()
    encoded = hypernet.encode(tiny_llama, rows)
    assert encoded.acts is not None
    n_layers, d_in = len(hypernet.config.layers), hypernet.config.module_d_in
    assert encoded.acts.shape[:2] == (2, n_layers) and encoded.acts.shape[-1] == d_in
    # the captured inputs are the target modules' own: what a hook on layer 2's down_proj sees for the wrapped chunk
    prefix, suffix = chat_wrap_ids(tiny_llama.tokenizer)
    wrapped = prefix + rows[1] + suffix
    seen: list[torch.Tensor] = []
    module = tiny_llama.model.get_submodule(hypernet.config.module_name(2))
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]) and None)
    try:
        with torch.no_grad():
            tiny_llama.model(input_ids=torch.tensor([wrapped]))
    finally:
        handle.remove()
    torch.testing.assert_close(encoded.acts[1, 1, :len(wrapped)], seen[0][0])
    after = hypernet(*encoded)
    for name, w in before.weights.items():  # a zero key gain: the same adapters
        torch.testing.assert_close(after.weights[name].A, w.A)
        torch.testing.assert_close(after.weights[name].B, w.B)
    with pytest.raises(ValueError, match="already"):
        hypernet.add_activation_keys()
    with pytest.raises(ValueError, match="come together"):
        hypernet(encoded.states, encoded.mask)
    with torch.no_grad():
        hypernet.heads.key_gain.fill_(1.0)
    moved = hypernet(*encoded)
    assert all(not torch.allclose(moved.weights[n].A, w.A) for n, w in before.weights.items())
    config = _config(tmp_path, steps=2).model_copy(update={"init_from": str(tmp_path / "init"),
                                                           "add_activation_keys": True})
    Trainer(config, base=tiny_llama).run()
    saved = DocToLoRA.from_pretrained(tmp_path / "run" / "hypernet", base=tiny_llama)
    assert saved.config.activation_keys and saved.heads.key_gain.abs().sum() > 0  # the gain learned
    with pytest.raises(ValueError, match="set init_from"):
        TrainConfig(stages=config.stages, add_activation_keys=True)
    with pytest.raises(ValueError, match="pooling-trunk"):
        DocToLoRA.for_base_model(tiny_llama, **{**TINY_HYPERNET, "trunk": "perceiver", "activation_keys": True})


def test_distill_objective_runs(tmp_path, tiny_llama):
    trainer = Trainer(_config(tmp_path, steps=1, objective="distill", distill_top_k=4), base=tiny_llama)
    record = trainer.train_step()
    assert record["loss"] > 0 and torch.isfinite(torch.tensor(record["loss"]))
    assert len(list((tmp_path / "run" / "teacher-cache").iterdir())) > 0  # targets cached on disk


def test_sample_examples_differs_per_worker():
    stage = Stage(name="s", steps=1, tasks=[TaskSpec(kind="needle")])
    assert sample_examples(stage, 0, 5, "train", 2, worker=0) != sample_examples(stage, 0, 5, "train", 2, worker=1)


def test_accelerate_path_trains(tmp_path, tiny_llama):
    trainer = Trainer(_config(tmp_path, steps=2, accelerate=True), base=tiny_llama)
    assert trainer.accelerator is not None
    before = {k: v.clone() for k, v in trainer.hypernet.state_dict().items()}
    trainer.run()
    changed = [k for k, v in trainer.hypernet.state_dict().items() if not torch.equal(v, before[k])]
    assert changed


def test_evaluate_quick(tiny_llama):
    torch.manual_seed(0)
    hypernet = DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET)
    config = EvalConfig(needle_lengths=[16, 100], needle_depths=[0.5], needle_per_cell=1, facts_documents=2,
                        max_new_tokens=4)
    report = evaluate_hypernet(hypernet, tiny_llama, config, progress=False)
    assert set(report.needle) == {16, 100}
    assert set(report.facts) == {"internalized", "in-context", "closed-book"}
    assert 0.0 <= report.facts["in-context"]["exact"] <= 1.0
    assert "adapter_cosine" in report.diagnostics
    assert "| 100 |" in report.to_markdown()


def test_evaluate_density_cuts_dense_documents_at_each_length(tiny_llama):
    torch.manual_seed(0)
    hypernet = DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET)
    results, in_context = evaluate_density(hypernet, tiny_llama, [16, 64], documents=1, sheets=3,
                                           max_new_tokens=2, progress=False)
    assert set(results) == {16, 64}
    assert results[16]["chunks_per_doc"] > results[64]["chunks_per_doc"] >= 1
    assert results[16]["facts_per_chunk"] < results[64]["facts_per_chunk"]
    assert all(r["n"] == 3 and 0 <= r["routing"] <= 1 for r in results.values())
    assert 0 <= in_context <= 1
    table = density_markdown(results, in_context, rank=4, sheets=3, trained_tokens=32)
    assert "| 64 (beyond training) |" in table and "| 16 |" in table


def test_scoring():
    assert exact_match(" 4821.", "4821") and not exact_match("It is 4821", "4821")
    assert contains("It is 4821.", "4821") and not contains("It is 4822", "4821")


def test_context_distillation_baseline_fits_one_document(tiny_llama):
    hypernet = DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET)
    example = needle_example(random.Random(0), "train")
    result = distill_document(tiny_llama, example, hypernet.config, steps=20, lr=1e-2)
    # a tiny random model's tied 0.02-std embeddings cap how far logits can move; 10.7 -> ~9.7 is its range
    assert result.losses[-1] < result.losses[0] - 0.5
    assert isinstance(result.adapter, LoRAAdapter) and result.adapter.rank == 4


def test_default_config_fits_a_shallow_model(tiny_llama):
    hypernet = DocToLoRA.for_base_model(tiny_llama)  # the default early-exit depth (8) exceeds 4 layers
    assert hypernet.config.input_layer == 1
    with pytest.raises(ValueError, match="input_layer"):
        DocToLoRA.for_base_model(tiny_llama, input_layer=8)  # an explicit choice is never silently changed


def test_the_trainer_trains_an_associative_readers_maps_and_resumes(tmp_path, tiny_llama):
    from lora_memory.hypernet.associative import AssociativeReader

    texts = ["Kigali is the capital of Rwanda.", "The Vorland Bridge was completed in 1873 by Mara Quill."]
    AssociativeReader.fit(tiny_llama, texts, progress=False, target_layers=[2], max_chunk_tokens=64,
                          associative_map_rank=4).save_pretrained(tmp_path / "init")
    config = _config(tmp_path, steps=2, init_from=str(tmp_path / "init"))
    trainer = Trainer(config, base=tiny_llama)
    trainer.run(max_steps=1)
    resumed = Trainer(config, base=tiny_llama)
    assert resumed.step == 1 and isinstance(resumed.hypernet, AssociativeReader)
    resumed.run()
    saved = DocToLoRA.from_pretrained(tmp_path / "run" / "hypernet", base=tiny_llama)
    assert isinstance(saved, AssociativeReader) and saved.query_u.abs().sum() > 0  # the query map learned
    fitted = DocToLoRA.from_pretrained(tmp_path / "init", base=tiny_llama)
    torch.testing.assert_close(saved.key_covariance, fitted.key_covariance)  # the fitted part stays as fitted
    log = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert "eval_bias_gap_" in log[-1]  # the empty memory is the document-free reference


def test_the_trainer_adds_a_companion_trains_both_parts_and_resumes(tmp_path, tiny_llama):
    from lora_memory.hypernet.associative import AssociativeReader

    texts = ["Kigali is the capital of Rwanda.", "The Vorland Bridge was completed in 1873 by Mara Quill."]
    AssociativeReader.fit(tiny_llama, texts, progress=False, target_layers=[3], max_chunk_tokens=32,
                          associative_map_rank=4).save_pretrained(tmp_path / "memory")
    DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET).save_pretrained(tmp_path / "init")
    config = _config(tmp_path, steps=2, init_from=str(tmp_path / "init"), add_companion=str(tmp_path / "memory"))
    Trainer(config, base=tiny_llama).run(max_steps=1)
    resumed = Trainer(config, base=tiny_llama)
    assert resumed.step == 1 and isinstance(resumed.hypernet.companion, AssociativeReader)
    resumed.run()
    saved = DocToLoRA.from_pretrained(tmp_path / "run" / "hypernet", base=tiny_llama)
    assert isinstance(saved.companion, AssociativeReader) and saved.companion.query_u.abs().sum() > 0
    start = DocToLoRA.from_pretrained(tmp_path / "init", base=tiny_llama)
    assert not torch.equal(saved.heads.bias_b, start.heads.bias_b)  # the learned part trained too
    with pytest.raises(ValueError, match="init_from"):
        _config(tmp_path, add_companion=str(tmp_path / "memory"))


def test_delta_norm_is_the_squared_size_of_the_delta_beyond_the_reference():
    from lora_memory.adapter import LoRAWeights
    from lora_memory.training.objectives import delta_norm

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 10, generator=gen), torch.randn(3, 7, 4, generator=gen)
    ra, rb = torch.randn(2, 10, generator=gen), torch.randn(7, 2, generator=gen)
    rows = LoRAAdapter({"m": LoRAWeights(a, b), "n": LoRAWeights(a, b)}, 0.5)
    ref = LoRAAdapter({"m": LoRAWeights(ra, rb), "n": LoRAWeights(ra, rb)}, 2.0)
    dense = ((0.5 * b @ a - 2.0 * rb @ ra) ** 2).sum((1, 2))
    torch.testing.assert_close(delta_norm(rows, ["m"], ref), dense)
    torch.testing.assert_close(delta_norm(rows, ["m", "n"], ref), 2 * dense)
    torch.testing.assert_close(delta_norm(rows, ["m"]), ((0.5 * b @ a) ** 2).sum((1, 2)))
    with pytest.raises(ValueError, match="module"):
        delta_norm(rows, [])


def test_the_quiet_term_holds_the_learned_reader_quiet_on_its_families_only(tmp_path, tiny_llama):
    from lora_memory.training.d2l.trainer import compute_loss, generate_adapters
    from lora_memory.training.objectives import delta_norm
    from memory_support import tiny_hypernet

    hypernet = tiny_hypernet(tiny_llama, 0, **{**TINY_HYPERNET, "dedupe_bias": True})
    rng = random.Random(0)
    examples = [needle_example(rng, "train", 10, 60), facts_example(rng, "train")]
    plain = _config(tmp_path)
    quiet = _config(tmp_path, quiet_weight=0.5, quiet_kinds=["facts"])
    loss, _, extra = compute_loss(hypernet, tiny_llama, examples, quiet, None)
    base_loss, _, base_extra = compute_loss(hypernet, tiny_llama, examples, plain, None)
    own = [hypernet.config.module_name(layer) for layer in hypernet.config.layers]
    with torch.no_grad():
        norms = delta_norm(generate_adapters(hypernet, tiny_llama, examples), own, hypernet.bias_adapter())
    assert "quiet_norm" not in base_extra and extra["quiet_norm"] == pytest.approx(norms[1].item(), rel=1e-4)
    assert norms[1] > 0 and loss.item() == pytest.approx(base_loss.item() + 0.5 * norms[1].item(), rel=1e-4)
    _, _, none = compute_loss(hypernet, tiny_llama, examples[:1], quiet, None)
    assert "quiet_norm" not in none  # no example of its families: no term

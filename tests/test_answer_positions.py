"""The answer-position diagnostic: which part of an answer a setting's loss sits in."""

from __future__ import annotations

import pytest
import torch

from lora_memory.evaluation.answer_positions import (
    PROMPTS,
    _fact_nats,
    _parts,
    answer_positions,
    fact_in_sentence,
    positions_markdown,
    sentences_markdown,
)
from lora_memory.training.batching import answer_ids, student_batch
from lora_memory.training.objectives import token_losses


def test_positions_split_into_first_inner_and_end():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    rows = torch.tensor([0, 0, 1, 1, 1, 1, 2])  # answers of 2, 4 and 1 labelled tokens
    parts = _parts(losses, rows)
    assert parts["first"] == [1.0, 3.0, 7.0]
    assert parts["inner"] == [4.0, 5.0]
    assert parts["end"] == [2.0, 6.0]  # a one-token answer's only token counts as its first
    assert parts["all"] == losses.tolist()


def test_the_diagnostic_reports_every_setting_and_the_adapters(tiny_llama, hypernet):
    base_only = answer_positions(tiny_llama, None, articles=2)
    assert set(base_only) == set(PROMPTS)
    with_adapters = answer_positions(tiny_llama, hypernet, articles=2)
    assert set(with_adapters) == set(PROMPTS) | {"own_adapter", "other_adapter", "bias_adapter"}
    for setting in PROMPTS:  # the base model's settings do not depend on the hypernetwork
        assert with_adapters[setting]["all"] == pytest.approx(base_only[setting]["all"], rel=1e-5)
    closed = with_adapters["closed_book"]
    weighted = sum(closed[p] * closed[f"n_{p}"] for p in ("first", "inner", "end")) / closed["n_all"]
    assert closed["all"] == pytest.approx(weighted, rel=1e-5)  # the parts cover every answer token once
    assert with_adapters["own_adapter"]["n_all"] == closed["n_all"]
    table = positions_markdown(with_adapters, "tiny")
    assert "| own adapter |" in table and "| in context one shot |" in table


def test_fact_nats_sum_the_losses_of_the_tokens_inside_the_span(tiny_llama):
    tok = tiny_llama.tokenizer
    prompt, answer = "When was Kigali founded?", "It was founded in 1907."
    start = answer.index("1907")
    whole, fact = _fact_nats(tiny_llama, [prompt] * 2, [answer] * 2, [(0, len(answer)), (start, start + 4)])
    batch = student_batch(tok, [prompt], [answer_ids(tok, answer)], [0])
    losses, _ = token_losses(tiny_llama.model, batch, None)
    assert whole == pytest.approx(losses[:-1].sum().item(), rel=1e-4)  # every answer token but the end of turn
    enc = tok(answer, add_special_tokens=False, return_offsets_mapping=True)
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < start + 4 and b > start]
    assert 0 < len(inside) < len(enc["input_ids"])
    assert fact == pytest.approx(losses[inside].sum().item(), rel=1e-4)


def test_fact_in_sentence_reports_both_forms_in_both_settings(tiny_llama):
    result = fact_in_sentence(tiny_llama, articles=2)
    assert result["n"] > 0
    assert {f"{form}_{s}" for form in ("span", "sentence") for s in ("closed_book", "in_context")} <= set(result)
    assert "| sentence |" in sentences_markdown(result)


def test_fact_in_sentence_with_a_hypernetwork_adds_its_own_and_another_articles_adapter(tiny_llama, hypernet):
    base_only = fact_in_sentence(tiny_llama, articles=2)
    result = fact_in_sentence(tiny_llama, articles=2, hypernet=hypernet)
    for form in ("span", "sentence"):
        assert result[f"{form}_closed_book"] == pytest.approx(base_only[f"{form}_closed_book"], rel=1e-5)
        assert result[f"{form}_own_adapter"] != pytest.approx(result[f"{form}_closed_book"])
        assert result[f"{form}_own_adapter"] != pytest.approx(result[f"{form}_other_adapter"])
    table = sentences_markdown(result)
    assert "own adapter | other adapter |" in table and "own adapter" not in sentences_markdown(base_only)

"""The shipped Doc-to-LoRA checkpoint on the embedded model: it loads, and it internalizes held-out documents.

Thresholds sit well below what ``lora-memory eval`` measured (docs/eval.md: needle 1.00 at
256 tokens and 1.00 routed at 2K-32K; facts 0.55 exact over 160 questions, closed-book 0.00),
so the test fails on a broken checkpoint or pipeline, not on sampling noise.
"""

from __future__ import annotations

import random

import pytest

from lora_memory.checkpoints import default_hypernet_dir
from lora_memory.evaluation.d2l import EvalConfig, evaluate_needle
from lora_memory.evaluation.scoring import exact_match
from lora_memory.generation import GenerationConfig, generate
from lora_memory.hypernet import DocToLoRA
from lora_memory.training.d2l.data import facts_example

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped(embedded_base) -> DocToLoRA:
    return DocToLoRA.from_pretrained(default_hypernet_dir(), base=embedded_base)


def test_shipped_checkpoint_is_small_safetensors():
    files = {p.name: p.stat().st_size for p in default_hypernet_dir().iterdir()}
    assert set(files) == {"config.json", "model.safetensors"}
    assert files["model.safetensors"] <= 16 * 2**20


def test_needles_in_short_and_chunked_haystacks(shipped, embedded_base):
    config = EvalConfig(needle_lengths=[256, 2048], needle_depths=[0.2, 0.8], needle_per_cell=3, seed=7,
                        max_new_tokens=8)
    result = evaluate_needle(shipped, embedded_base, config, progress=False)
    assert result[256]["exact"] >= 5 / 6
    assert result[2048]["chunks"] > 1 and result[2048]["routed"] >= 4 / 6


def test_fact_sheets_beat_closed_book(shipped, embedded_base):
    rng = random.Random(11)
    config = GenerationConfig(max_new_tokens=12)
    internalized = closed = total = 0
    for _ in range(8):
        ex = facts_example(rng, "heldout")
        adapter = shipped.internalize(embedded_base, ex.document)
        for qa in ex.qa:
            total += 1
            internalized += exact_match(generate(embedded_base.model, embedded_base.tokenizer, qa.question,
                                                 adapter=adapter, config=config).text, qa.answer)
            closed += exact_match(generate(embedded_base.model, embedded_base.tokenizer, qa.question,
                                           config=config).text, qa.answer)
    assert internalized / total >= 0.3 and internalized / total >= closed / total + 0.25

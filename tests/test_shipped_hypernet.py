"""The shipped Doc-to-LoRA checkpoint on the embedded model: it loads, and it internalizes held-out documents.

Thresholds sit well below what ``lora-memory eval`` measured (docs/eval.md: needle 0.90 at
256 tokens and 1.00 routed at 2K-32K; facts 0.77 exact over 160 questions, closed-book 0.00;
held-out Wikipedia summaries 0.27 routed top-1 against closed-book 0.11), so the test fails on a
broken checkpoint or pipeline, not on sampling noise.
"""

from __future__ import annotations

import random

import pytest

from lora_memory.checkpoints import default_hypernet_dir
from lora_memory.evaluation.d2l import EvalConfig, evaluate_needle
from lora_memory.evaluation.scoring import contains, exact_match
from lora_memory.generation import GenerationConfig, generate
from lora_memory.hypernet import DocToLoRA
from lora_memory.hypernet.associative import AssociativeReader
from lora_memory.training.d2l.data import facts_example

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped(embedded_base) -> DocToLoRA:
    return DocToLoRA.from_pretrained(default_hypernet_dir(), base=embedded_base)


def test_shipped_checkpoint_is_small_safetensors():
    files = {p.name: p.stat().st_size for p in default_hypernet_dir().iterdir()}
    assert set(files) == {"config.json", "model.safetensors"}
    assert files["model.safetensors"] <= 40 * 10**6  # the bound on the shipped checkpoint


def test_it_carries_an_associative_memory_for_prose(shipped):
    assert isinstance(shipped.companion, AssociativeReader)
    assert shipped.companion.config.associative_map_rank > 0  # its maps were trained, not only fitted


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


# fictional, so the base model cannot know them; written for this test, in prose unlike the training data
PROSE = [
    ("The Vorland Bridge spans the river Ess in the town of Maretania. It was completed in 1873 by the engineer "
     "Mara Quill, after six years of work. The bridge is built of red sandstone and has seven arches.",
     [("Who built the Vorland Bridge?", "Mara Quill"), ("When was the Vorland Bridge completed?", "1873"),
      ("How many arches does the Vorland Bridge have?", "seven")]),
    ("Tarvik is a small island in the northern Selka Sea. Its only town, Orrin, has about 2,400 inhabitants, most of "
     "whom work in fishing. The island's highest point is Mount Keld, at 612 metres.",
     [("What is the only town on Tarvik?", "Orrin"), ("What is the highest point of Tarvik?", "Mount Keld"),
      ("In which sea is Tarvik?", "Selka")]),
    ("The Halvard Institute is a research centre for ocean chemistry founded in 1952 by the chemist Ilse Brand. It "
     "is based in the port city of Kessmouth and employs about 300 scientists.",
     [("Who founded the Halvard Institute?", "Ilse Brand"), ("Where is the Halvard Institute based?", "Kessmouth"),
      ("When was the Halvard Institute founded?", "1952")]),
]


def test_prose_facts_beat_closed_book(shipped, embedded_base):
    config = GenerationConfig(max_new_tokens=40)
    hits = {"internalized": 0, "closed-book": 0}
    for document, questions in PROSE:
        adapter = shipped.internalize(embedded_base, document)
        for question, answer in questions:
            for setting, used in (("internalized", adapter), ("closed-book", None)):
                reply = generate(embedded_base.model, embedded_base.tokenizer, question, adapter=used, config=config)
                hits[setting] += contains(reply.text, answer)
    assert hits["internalized"] >= hits["closed-book"] + 2, hits

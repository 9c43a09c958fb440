"""The collection-size evaluation runs end to end and writes its report (on a tiny random model: no accuracy checked)."""

from __future__ import annotations

import json
import os

import pytest

from lora_memory import paths
from lora_memory.evaluation.collections import (
    PLOT_NAME,
    RESULTS_NAME,
    CollectionEvalConfig,
    evaluate,
    make_documents,
    parse_args,
    write_outputs,
)
from lora_memory.evaluation.machine import machine_info
from lora_memory.training.d2l.data import NEEDLE_QUESTION
from memory_support import tiny_hypernet

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def config() -> CollectionEvalConfig:
    return CollectionEvalConfig.quick().model_copy(update={"max_new_tokens": 4})


def test_documents_leave_each_question_one_answer(config):
    config = config.model_copy(update={"sizes": [1, 40], "facts_targets": 3})
    targets, distractors = make_documents(config)
    assert len(distractors) == 39
    assert [t.kind for t in targets] == ["needle"] * config.needle_targets + ["facts"] * 3
    assert all(t.qa[0].question == NEEDLE_QUESTION for t in targets if t.kind == "needle")
    assert not any("magic number" in d.document for d in distractors)
    entities = [d.info["entity"] for d in targets + distractors if d.kind == "facts"]
    assert len(entities) == len(set(entities)) > 3
    assert make_documents(config)[1][5].document == distractors[5].document  # seeded


def test_quick_evaluation_writes_report(tiny_llama, config, tmp_path):
    home = os.environ.get(paths.HOME_ENV)
    results = evaluate(tiny_llama, tiny_hypernet(tiny_llama), config, progress=False)
    assert os.environ.get(paths.HOME_ENV) == home  # the temporary home is undone
    [long_key] = [f"{lo}-{hi}" for lo, hi in config.long_needle_tokens]
    assert set(results) == {"sizes", long_key}

    trials = results["sizes"]
    questions = config.needle_targets + config.facts_targets * config.facts_questions
    settings = config.settings()
    assert len(trials) == len(config.sizes) * len(settings) * questions
    assert all(t.hit for t in trials)  # BM25 finds the target's magic number or entity among the distractors
    by = {(t.size, t.setting, t.question): t for t in trials}
    for t in trials:
        if t.setting == "top-1":
            assert t.rank == 8  # one chunk: the hypernetwork's rank, no bias correction
        if t.size == 10 and t.setting == "all":  # every chunk of ten documents
            assert t.chunks >= 10 and t.rank == 8 * t.chunks + 8
        if t.setting == "top-2+rank-16":
            assert t.rank == min(16, by[(t.size, "top-2", t.question)].rank)
            assert t.adapter_bytes <= by[(t.size, "top-2", t.question)].adapter_bytes
    assert {t.setting for t in results[long_key]} == {"all", "top-1", "top-2", "top-4"}
    assert all(t.size == 1 and t.chunks > 1 for t in results[long_key])  # long: several chunks of one document

    report = write_outputs(results, tmp_path, machine_info(tiny_llama), "python -m lora_memory.evaluation.collections "
                           "--quick", "a random initialisation", config, seconds=1.0)
    text = report.read_text()
    for size in config.sizes:
        for setting in settings:
            assert f"| {size} |" in text and f"| {setting} |" in text
    assert f"| {long_key} |" in text and "`python -m lora_memory.evaluation.collections --quick`" in text
    assert "top_k=1" in text  # the defaults section states the current MemoryConfig defaults
    assert (tmp_path / PLOT_NAME).read_bytes().startswith(PNG_MAGIC)
    saved = json.loads((tmp_path / RESULTS_NAME).read_text())
    assert len(saved["trials"]["sizes"]) == len(trials) and len(saved["summary"]["sizes"]) == len(config.sizes) * len(settings)
    assert not (paths.collections_dir() / "size-10").exists()  # built in the temporary home only


def test_arguments():
    args = parse_args(["--quick", "--out", "x", "--threads", "2"])
    assert args.quick and str(args.out) == "x" and args.threads == 2 and args.hypernet is None

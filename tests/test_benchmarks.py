"""The benchmark suite works and writes its report (the numbers themselves are checked by nobody here).

``python -m benchmarks.run --smoke`` runs every benchmark at tiny sizes, once, on
the real embedded model; the speed targets it reports are never asserted.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def benchmarks_on_path():
    """Make the repository's ``benchmarks`` package importable (it is not installed)."""
    sys.path.insert(0, str(REPO))
    try:
        yield
    finally:
        sys.path.remove(str(REPO))


def test_measure_alternates_order_and_keeps_self_timed_values(benchmarks_on_path):
    from benchmarks.common import measure

    calls: list[str] = []
    stats = measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b") or 7.0},
                    runs=3, warmup=1, self_timed={"b"})
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up first, then reversed every other run
    assert stats["b"].samples == [7.0, 7.0, 7.0]
    assert len(stats["a"].samples) == 3 and all(0 <= s < 1 for s in stats["a"].samples)


def test_kv_formula_matches_a_real_cache(benchmarks_on_path, tiny_llama):
    from benchmarks.footprint import cache_nbytes, kv_bytes_per_token

    with torch.inference_mode():
        cache = tiny_llama.model(input_ids=torch.ones(1, 37, dtype=torch.long), use_cache=True).cache
    assert cache_nbytes(cache) == 37 * kv_bytes_per_token(tiny_llama.model.config, element_bytes=4)  # fp32


def test_adapter_formula_counts_both_parts_of_a_reader_with_a_companion(benchmarks_on_path, tiny_llama):
    from benchmarks.footprint import adapter_bytes, part_ranks
    from lora_memory.chunking import chunk_text
    from lora_memory.hypernet.associative import AssociativeReader
    from memory_support import tiny_hypernet

    texts = ["Kigali is the capital of Rwanda. It was founded in 1907 by a German doctor.",
             "The Vorland Bridge spans the river Ess. The engineer Mara Quill completed it in 1873."]
    learned = tiny_hypernet(tiny_llama, target_layers=[0, 1], input_layer=1, max_chunk_tokens=16)
    both = learned.add_companion(AssociativeReader.fit(tiny_llama, texts, progress=False, target_layers=[2],
                                                       max_chunk_tokens=16))
    chunks = [c for t in texts for c in chunk_text(tiny_llama.tokenizer, t, 16)]
    assert len(chunks) > 2
    composed = both.compose(both.adapters_for_chunks(tiny_llama, chunks)).to(dtype=torch.bfloat16)
    parts = part_ranks(both.config, [len(c.token_ids) for c in chunks])
    assert [r for r, _ in parts] == [(len(chunks) + 1) * both.config.rank, sum(len(c.token_ids) - 1 for c in chunks) + 1]
    assert composed.nbytes() == adapter_bytes(parts)
    assert adapter_bytes(parts, max_rank=4) == composed.compress(4).to(dtype=torch.bfloat16).nbytes()


def test_minilm_embeddings_rank_related_text_first(benchmarks_on_path):
    from benchmarks.minilm import MiniLMEmbedding

    embed = MiniLMEmbedding()
    query = torch.tensor(embed.get_query_embedding("Where did the cat sleep?"))
    related, unrelated = (torch.tensor(v) for v in embed.get_text_embedding_batch(
        ["The cat slept on the warm windowsill.", "Quarterly revenue rose by four percent."]))
    assert query.shape == (384,)
    assert torch.isclose(query.norm(), torch.tensor(1.0), atol=1e-4)
    assert query @ related > query @ unrelated + 0.2


def test_only_keeps_the_other_sections_of_a_same_mode_report(benchmarks_on_path, tmp_path):
    from types import SimpleNamespace

    from benchmarks.common import BenchSettings, Section, Target
    from benchmarks.run import previous_sections, write_report

    ctx = SimpleNamespace(hypernet_label="a label", hypernet_trained=True)
    sections = [Section("1. A", ["line a"], ["a.png"], [Target.at_least("t", "goal", 3.0, 2.0, "why")], {"x": 1}, "a"),
                Section("2. B", ["line b"], [], [], {"y": 2}, "b")]
    write_report(tmp_path, BenchSettings.for_mode("quick"), {"cpu": "test"}, ctx, sections, "cmd", 1.0)

    kept = previous_sections(tmp_path, "quick", keep={"a"})
    assert list(kept) == ["a"] and kept["a"] == sections[0]
    assert previous_sections(tmp_path, "full", keep={"a"}) == {}  # another mode's numbers are never mixed in
    assert previous_sections(tmp_path / "none", "quick", keep={"a"}) == {}


@pytest.mark.slow
@pytest.mark.allow_hosts(["127.0.0.1"])  # the serving benchmark's servers and clients talk over loopback
def test_smoke_run_writes_report_json_and_plots(benchmarks_on_path, tmp_path):
    from benchmarks import run
    from benchmarks.common import DTYPE

    assert run.main(["--smoke", "--out", str(tmp_path)]) == 0

    report = (tmp_path / "benchmarks.md").read_text()
    for title in ("1. Internalization cost", "2. Answer latency", "3. Memory", "4. Accuracy", "5. Cache",
                  "6. Serving", "7. A real corpus"):
        assert f"## {title}" in report
    figures = re.findall(r"!\[[^\]]*\]\((img/[^)]+\.png)\)", report)
    assert len(figures) == 7
    for figure in figures:
        assert (tmp_path / figure).read_bytes()[:8] == PNG_MAGIC
    targets = [line for line in report.splitlines() if re.search(r"\| (PASS|\*\*MISS\*\*|n/a) \|", line)]
    assert len(targets) == 14, targets
    assert "extrapolated" in report and "(match)" in report

    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert data["machine"]["torch_threads"] == 1 and data["machine"]["cpu"]
    assert data["machine"]["dtype"] == DTYPE  # the library's "auto" on this CPU
    rss = data["sections"]["3. Memory: adapter vs KV cache, peak RSS"]["rss_mib"]["128"]
    assert set(rss) == {"base", "internalized", "in-context", "rag"}
    assert all(v["peak"]["median"] >= v["after_load"]["median"] > 0 for v in rss.values())
    corpus = data["sections"]["7. A real corpus as one collection"]
    assert corpus["documents"] == 30 and corpus["tokens"] > 1000 and corpus["open"]["documents"] == 30
    assert corpus["needle_accuracy"]["router"] == 1.0  # the smoke corpus's needles are routed to their documents
    assert corpus["bytes"]["collection"] > corpus["bytes"]["vector_index"] > corpus["bytes"]["text"]

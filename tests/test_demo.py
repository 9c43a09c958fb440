"""The demo's pieces on a tiny model: modes, the internalized mode through a memory, the report."""

from __future__ import annotations

import torch

from lora_memory import demo
from lora_memory.generation import GenerationConfig
from lora_memory.hypernet import DocToLoRA

CONFIG = GenerationConfig(max_new_tokens=4)


def test_reference_modes_only_without_a_checkpoint(tiny_llama, tmp_path):
    assert demo.build_memory(tiny_llama, tmp_path / "no-checkpoint", tmp_path / "collection") is None
    chosen = demo.modes(None)
    assert [name for name, _ in chosen] == ["in context", "closed book"]
    rows = demo.run(tiny_llama, CONFIG, chosen)
    assert len(rows) == 2 * len(demo.QUESTIONS)
    in_context = [r for r in rows if r.mode == "in context"]
    closed = [r for r in rows if r.mode == "closed book"]
    # the documents are in one prompt and not in the other
    doc_tokens = len(tiny_llama.tokenizer(demo.DOCUMENT, add_special_tokens=False).input_ids)
    for a, b in zip(in_context, closed):
        assert a.prompt_tokens - b.prompt_tokens >= doc_tokens
    text = demo.report(rows, ["in context", "closed book"])
    assert all(q in text for q, _ in demo.QUESTIONS) and f"/{len(demo.QUESTIONS)}" in text


def test_internalized_mode_through_a_memory(tiny_llama, tmp_path):
    torch.manual_seed(0)
    hypernet = DocToLoRA.for_base_model(tiny_llama, input_layer=2, rank=4, max_chunk_tokens=64)
    with torch.no_grad():
        hypernet.heads.map_b.second.normal_(0, 0.5)  # move off the no-op initialisation
    hypernet.save_pretrained(tmp_path / "hypernet")
    memory, seconds = demo.build_memory(tiny_llama, tmp_path / "hypernet", tmp_path / "collection")
    assert len(memory) == len(demo.DOCUMENTS) and seconds > 0
    chosen = demo.modes(memory)
    assert [name for name, _ in chosen][-1] == "internalized"
    rows = {r.mode: r for r in demo.run(tiny_llama, CONFIG, chosen) if r.question == demo.QUESTIONS[0][0]}
    assert rows["internalized"].prompt_tokens == rows["closed book"].prompt_tokens  # no document in the prompt
    assert rows["internalized"].answer != rows["closed book"].answer  # but an adapter was applied
    memory.close()

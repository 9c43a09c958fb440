"""End to end on the real embedded SmolLM2-135M-Instruct (slow: loads 135M parameters)."""

from __future__ import annotations

import copy

import peft
import pytest
import torch

from lora_memory.apply import apply_adapter
from lora_memory.base import EMBEDDED_NAME, load_base_model, resolve_dtype
from lora_memory.generation import GenerationConfig, generate, stream
from lora_memory.hypernet import DocToLoRA

pytestmark = pytest.mark.slow

PROMPT_IDS_TEXT = "The capital of France is"


def _ids(base) -> torch.Tensor:
    return base.tokenizer(PROMPT_IDS_TEXT, return_tensors="pt").input_ids


def _logits(base, adapter=None) -> torch.Tensor:
    with torch.no_grad(), apply_adapter(base.model, adapter):
        return base.model(_ids(base)).logits.float()


def test_embedded_model_loads_with_its_known_shape(embedded_base):
    cfg = embedded_base.model.config
    assert embedded_base.name == EMBEDDED_NAME and embedded_base.dtype is resolve_dtype("auto", torch.device("cpu"))
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == ("llama", 30, 576, 1536)
    assert len(embedded_base.fingerprint) == 16


def test_embedded_model_answers_and_streams(embedded_base):
    cfg = GenerationConfig(max_new_tokens=12)
    answer = generate(embedded_base.model, embedded_base.tokenizer, "What is the capital of France?", config=cfg)
    assert "Paris" in answer.text
    pieces = list(stream(embedded_base.model, embedded_base.tokenizer, "What is the capital of France?", config=cfg))
    assert "".join(pieces) == answer.text


def test_random_adapter_changes_logits(embedded_base, make_lora):
    adapter = make_lora(embedded_base.model, rank=4, std=0.02, dtype=embedded_base.dtype)
    assert (_logits(embedded_base, adapter) - _logits(embedded_base)).abs().max() > 0.1


def test_peft_export_reloads_to_the_same_logits_bf16(tmp_path, make_lora):
    """bf16: PEFT with the adapter kept in bf16 runs the same ops as our hook. Measured difference: 0.

    (PEFT's default upcasts adapters to fp32, which in a bf16 model moves logits by up to ~0.6
    through rounding alone, about as much as this adapter does; the fp32 test covers the defaults.)
    """
    base = load_base_model("embedded", dtype="bf16", device="cpu")
    adapter = make_lora(base.model, rank=4, std=0.02, dtype=torch.bfloat16)
    ours = _logits(base, adapter)
    adapter.export_peft(tmp_path, base_model_name_or_path=EMBEDDED_NAME)
    model = peft.PeftModel.from_pretrained(copy.deepcopy(base.model), tmp_path,
                                           autocast_adapter_dtype=False).eval()
    with torch.no_grad():
        theirs = model(input_ids=_ids(base)).logits.float()
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-2)


def test_peft_export_reloads_to_the_same_logits_fp32(tmp_path, make_lora):
    """fp32 with PEFT's default settings: same logits within atol 1e-4 (measured difference: 0)."""
    base = load_base_model("embedded", dtype="fp32", device="cpu")
    adapter = make_lora(base.model, rank=4, std=0.02)
    ours = _logits(base, adapter)
    assert (ours - _logits(base)).abs().max() > 0.1
    adapter.export_peft(tmp_path, base_model_name_or_path=EMBEDDED_NAME)
    model = peft.PeftModel.from_pretrained(base.model, tmp_path).eval()  # base is ours alone: no copy needed
    with torch.no_grad():
        theirs = model(input_ids=_ids(base)).logits.float()
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)


def test_default_hypernet_fits_the_embedded_model(embedded_base):
    """The default configuration (early exit at layer 8, rank 8, all 30 down_proj) on the real model."""
    torch.manual_seed(0)
    hypernet = DocToLoRA.for_base_model(embedded_base).eval()
    adapter = hypernet.internalize(embedded_base, "Odile Marchetti keeps the lighthouse on Varn Island.")
    assert len(adapter.weights) == 30 and adapter.rank == 8
    w = adapter.weights["model.layers.29.mlp.down_proj"]
    assert w.A.shape == (8, 1536) and w.B.shape == (576, 8)
    assert torch.equal(_logits(embedded_base, adapter), _logits(embedded_base))  # no-op before training

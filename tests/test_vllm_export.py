"""``lora-memory export --for vllm``: ranks padded to what vLLM serves, scaling folded, PEFT reproduces our logits."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
from safetensors.torch import load_file

from lora_memory.adapter import PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME, LoRAAdapter, LoRAWeights
from lora_memory.apply import apply_adapter
from lora_memory.cli import main
from lora_memory.errors import IncompatibleAdapterError
from lora_memory.paths import HOME_ENV
from lora_memory.vllm_export import VLLM_RANKS, export_vllm, vllm_rank
from memory_support import save_models, tiny_hypernet


@pytest.mark.parametrize(("rank", "padded"), [(1, 1), (2, 8), (8, 8), (9, 16), (17, 32), (300, 320), (321, 512),
                                              (512, 512)])
def test_vllm_rank_is_the_next_allowed_rank(rank, padded):
    assert vllm_rank(rank) == padded and padded in VLLM_RANKS


def test_ranks_above_512_are_refused_with_max_rank_named():
    with pytest.raises(IncompatibleAdapterError, match="max_rank"):
        vllm_rank(513)


@pytest.mark.parametrize("ranks", [None, [2, 4, 6, 3]])  # one rank (4 -> 8), and mixed ranks per layer (-> 8)
def test_peft_loads_the_export_and_reproduces_our_logits(tmp_path, tiny_llama, make_lora, ranks):
    adapter = make_lora(tiny_llama.model, rank=6, scaling=2.7, seed=3, std=0.3)
    if ranks is not None:
        for (name, w), r in zip(sorted(adapter.weights.items()), ranks):
            adapter.weights[name] = LoRAWeights(w.A[:r].clone(), w.B[:, :r].clone())
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = tiny_llama.model(ids).logits
        with apply_adapter(tiny_llama.model, adapter):
            ours = tiny_llama.model(ids).logits
    assert (ours - plain).abs().max() > 1e-2  # the adapter changes the logits

    export_vllm(adapter, tmp_path, base_model_name_or_path="tiny-llama")
    config = json.loads((tmp_path / PEFT_CONFIG_NAME).read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 8 and config["rank_pattern"] == {}
    tensors = load_file(str(tmp_path / PEFT_WEIGHTS_NAME))
    assert {t.shape[0] for k, t in tensors.items() if k.endswith("lora_A.weight")} == {8}
    model = peft.PeftModel.from_pretrained(copy.deepcopy(tiny_llama.model), tmp_path).eval()
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_export_refuses_empty_and_batched_adapters(tmp_path):
    with pytest.raises(IncompatibleAdapterError):
        export_vllm(LoRAAdapter({}), tmp_path)
    with pytest.raises(ValueError, match="unbatch"):
        export_vllm(LoRAAdapter({"m": LoRAWeights(torch.ones(2, 2, 3), torch.ones(2, 4, 2))}), tmp_path)


def test_cli_export_for_vllm(tmp_path, tiny_llama, monkeypatch, capsys):
    base_dir, hypernet_dir = save_models(tiny_llama, tiny_hypernet(tiny_llama), tmp_path / "models")
    models = ["--base-model", str(base_dir), "--hypernet", str(hypernet_dir), "--dtype", "fp32", "--device", "cpu"]
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    doc = tmp_path / "notes.md"
    doc.write_text("Zebras sleep standing up in the Quenford zoo.")
    assert main(["ingest", str(doc), "-c", "zoo", *models]) == 0
    capsys.readouterr()
    assert main(["export", "-c", "zoo", str(tmp_path / "out"), "--for", "vllm", *models]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'out'}\n"
    config = json.loads((tmp_path / "out" / PEFT_CONFIG_NAME).read_text())
    assert config["r"] in VLLM_RANKS and config["lora_alpha"] == config["r"]
    assert main(["export", "-c", "empty", str(tmp_path / "none"), "--for", "vllm", *models]) == 1
    assert "is empty" in capsys.readouterr().err

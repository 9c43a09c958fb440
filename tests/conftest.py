"""Shared fixtures: tiny random base models with the real embedded tokenizer, and the real embedded model.

Tiny models (a few million parameters, fp32) make unit tests fast and exact; they
use the embedded SmolLM2 tokenizer so tokenization, chat templates and chunking
are the real ones. Tests on the real embedded model are marked ``slow``.

On-disk state goes to a per-session temporary home (``LORA_MEMORY_HOME``), except
converted base models (``LORA_MEMORY_MODELS``), which stay in the user's cache so
the one-off GGUF conversion (~20 s) happens once per machine, not once per run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from lora_memory import paths
from lora_memory.adapter import LoRAAdapter, LoRAWeights
from lora_memory.base import LoadedModel, embedded_model_dir, load_base_model, model_fingerprint
from lora_memory.hypernet import DocToLoRA
from memory_support import save_models, tiny_hypernet

TINY_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048)


# One torch thread. Measured on the 2-core machines while other jobs ran: tiny-model
# generation 10x faster, the slow embedded-model tests 8x faster (6 s instead of 47 s)
# than with two threads, which spin waiting for each other when the cores are busy.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def lora_memory_home() -> Iterator[Path]:
    """A throwaway ``LORA_MEMORY_HOME`` for the session; converted models stay in the persistent cache."""
    with paths.temporary_home(prefix="lora-memory-test-home-") as home:
        yield home


@pytest.fixture(scope="session")
def tokenizer(lora_memory_home: Path) -> PreTrainedTokenizerBase:
    """The embedded model's tokenizer (converts the embedded GGUF on first use on this machine)."""
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _tiny_base(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, name: str) -> LoadedModel:
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, fingerprint=model_fingerprint(model))


def _make_tiny_llama(tokenizer: PreTrainedTokenizerBase, seed: int) -> LoadedModel:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), **TINY_DIMS)
    return _tiny_base(LlamaForCausalLM(config), tokenizer, f"tiny-llama-{seed}")


@pytest.fixture(scope="session")
def make_tiny_llama(tokenizer: PreTrainedTokenizerBase) -> Callable[[int], LoadedModel]:
    """Builds a fresh 4-layer random llama (fp32) with the embedded tokenizer: same seed, same weights."""
    return lambda seed=0: _make_tiny_llama(tokenizer, seed)


@pytest.fixture(scope="session")
def tiny_llama(tokenizer: PreTrainedTokenizerBase) -> LoadedModel:
    """A shared tiny random llama. Tests must leave it as they found it (no hooks, no weight edits)."""
    return _make_tiny_llama(tokenizer, seed=0)


@pytest.fixture(scope="module")
def hypernet(tiny_llama: LoadedModel) -> DocToLoRA:
    """A perturbed tiny Doc-to-LoRA for ``tiny_llama`` (``memory_support.tiny_hypernet``), fresh per module."""
    return tiny_hypernet(tiny_llama)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_llama: LoadedModel,
               hypernet: DocToLoRA) -> tuple[Path, Path]:
    """``tiny_llama`` and ``hypernet`` saved to disk (base directory, hypernetwork directory), for workers."""
    return save_models(tiny_llama, hypernet, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_qwen2(tokenizer: PreTrainedTokenizerBase) -> LoadedModel:
    """A second architecture (qwen2: biased q/k/v projections, its own module classes)."""
    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=len(tokenizer), **TINY_DIMS)
    return _tiny_base(Qwen2ForCausalLM(config), tokenizer, "tiny-qwen2")


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_base(request: pytest.FixtureRequest) -> LoadedModel:
    """Each tiny architecture in turn."""
    return request.getfixturevalue(f"tiny_{request.param}")


@pytest.fixture(scope="session")
def embedded_base(lora_memory_home: Path) -> LoadedModel:
    """The real embedded SmolLM2-135M-Instruct on the CPU in the library's default dtype (bf16 where the CPU
    computes it natively, else fp32), for ``@pytest.mark.slow`` tests."""
    return load_base_model("embedded", dtype="auto", device="cpu")


def random_lora(model: torch.nn.Module, rank: int = 4, suffixes: tuple[str, ...] = ("mlp.down_proj",),
                scaling: float = 1.0, seed: int = 0, std: float = 0.1,
                dtype: torch.dtype = torch.float32) -> LoRAAdapter:
    """A random adapter on every linear module of ``model`` whose name ends with one of ``suffixes``."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(suffixes):
            A = torch.randn(rank, module.in_features, generator=gen) * std
            B = torch.randn(module.out_features, rank, generator=gen) * std
            weights[name] = LoRAWeights(A.to(dtype), B.to(dtype))
    assert weights, f"no module of {type(model).__name__} ends with {suffixes}"
    return LoRAAdapter(weights, scaling=scaling)


def trainable_rows(model: torch.nn.Module, seeds: tuple[int, ...] = (0, 1)) -> tuple[list[LoRAAdapter], LoRAAdapter]:
    """Random rank-4 adapters, one per seed, and their batched stack with gradients on: a stand-in for a
    hypernetwork's per-example adapters in tests of the training objectives."""
    rows = [random_lora(model, rank=4, scaling=1.0, seed=s) for s in seeds]
    stacked = LoRAAdapter.stack(rows)
    for w in stacked.weights.values():
        w.A.requires_grad_(True)
        w.B.requires_grad_(True)
    return rows, stacked


@pytest.fixture(scope="session")
def make_lora() -> Callable[..., LoRAAdapter]:
    """:func:`random_lora` as a fixture: ``make_lora(model, rank=4, suffixes=(...), scaling=1.0, seed=0)``."""
    return random_lora


@pytest.fixture(scope="session")
def make_trainable_rows() -> Callable[..., tuple[list[LoRAAdapter], LoRAAdapter]]:
    """:func:`trainable_rows` as a fixture: ``make_trainable_rows(model, seeds=(0, 1))``."""
    return trainable_rows

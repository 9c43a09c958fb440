"""Applying a LoRA adapter to a model with forward hooks.

The hook adds ``scaling * (x @ A.T) @ B.T`` to a target module's output. This is
numerically the PEFT LoRA forward, costs nothing extra in bf16, batches one
adapter per batch row for free (``A`` of shape (N, r, d_in) broadcasts against
``x`` of shape (N, T, d_in)), and lets gradients flow back into whatever produced
``A`` and ``B`` (a hypernetwork in training). PEFT is the export format, not the
runtime path.

A model shared by threads must never mix two callers' adapters, so
:func:`apply_adapter` holds a per-model re-entrant lock for as long as the hooks
are attached; the hooks are removed in ``finally``, even on exceptions.

Example:
    >>> with apply_adapter(model, adapter):  # doctest: +SKIP
    ...     logits = model(input_ids).logits
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .adapter import LoRAAdapter, LoRAWeights
from .errors import IncompatibleAdapterError

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises adapter use on ``model`` (one per model object)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def _make_hook(w: LoRAWeights, scaling: float) -> Callable[..., torch.Tensor]:
    A_t = w.A.transpose(-1, -2)  # (..., d_in, r)
    B_t = w.B.transpose(-1, -2)  # (..., r, d_out)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        a, b = A_t, B_t
        if a.dtype != x.dtype or a.device != x.device:
            a, b = a.to(x.device, x.dtype), b.to(x.device, x.dtype)
        if a.dim() == 3 and x.dim() == 3 and a.shape[0] != x.shape[0]:
            raise IncompatibleAdapterError(f"batched adapter has {a.shape[0]} rows but the input batch has {x.shape[0]}")
        return output + scaling * ((x @ a) @ b)  # (N, T, d_in) @ (N, d_in, r) @ (N, r, d_out)

    return hook


def check_compatible(model: nn.Module, adapter: LoRAAdapter) -> dict[str, nn.Linear]:
    """Resolve the adapter's module names in ``model`` and check their shapes.

    Raises:
        IncompatibleAdapterError: a module is missing, is not linear, or has other dimensions.
    """
    modules = dict(model.named_modules())
    found: dict[str, nn.Linear] = {}
    for name, w in adapter.weights.items():
        module = modules.get(name)
        if module is None:
            raise IncompatibleAdapterError(f"the model has no module {name!r} targeted by the adapter")
        d_in, d_out = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if (d_in, d_out) != (w.A.shape[-1], w.B.shape[-2]):
            raise IncompatibleAdapterError(
                f"{name}: the model's module is {d_in}->{d_out}, the adapter's is {w.A.shape[-1]}->{w.B.shape[-2]}"
            )
        found[name] = module
    return found


@contextmanager
def apply_adapter(model: nn.Module, adapter: LoRAAdapter | None) -> Iterator[nn.Module]:
    """Attach ``adapter`` to ``model`` for the duration of the ``with`` block.

    ``None`` applies nothing but still takes the model's lock, so a plain call
    never sees another thread's adapter. Re-entrant from the same thread (nested
    adapters add up).

    Raises:
        IncompatibleAdapterError: the adapter does not fit the model.
    """
    lock = model_lock(model)
    with lock:
        handles = []
        try:
            if adapter is not None:
                for name, module in check_compatible(model, adapter).items():
                    handles.append(module.register_forward_hook(_make_hook(adapter.weights[name], adapter.scaling)))
            yield model
        finally:
            for h in handles:
                h.remove()

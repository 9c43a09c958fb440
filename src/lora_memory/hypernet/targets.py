"""Discovering where LoRA goes in a base model: its decoder layers and target modules.

Nothing is hard-coded per architecture: the decoder layers are the longest
``nn.ModuleList`` of the model (``model.layers`` in llama, mistral, qwen and gemma
style models), and a target is a linear module found by its name suffix
(``mlp.down_proj`` by default) inside each layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import IncompatibleAdapterError


@dataclass(frozen=True)
class TargetModule:
    """One LoRA target: its layer index, full module name and dimensions."""

    layer: int
    name: str
    d_in: int
    d_out: int


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's decoder layer stack and its qualified name.

    Raises:
        IncompatibleAdapterError: the model has no ``ModuleList`` of layers.
    """
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None or len(best[1]) == 0:
        raise IncompatibleAdapterError(f"cannot find the decoder layers of {type(model).__name__}")
    return best


def find_targets(model: nn.Module, module_suffix: str, layers: list[int] | None = None) -> list[TargetModule]:
    """The target modules ``<layers>.<i>.<module_suffix>`` for the requested layer indices.

    Raises:
        IncompatibleAdapterError: a layer index is out of range or a layer lacks the module.
    """
    prefix, stack = decoder_layers(model)
    indices = list(range(len(stack))) if layers is None else list(layers)
    targets = []
    for i in indices:
        if not 0 <= i < len(stack):
            raise IncompatibleAdapterError(f"layer {i} is out of range: the model has {len(stack)} layers")
        try:
            module = stack[i].get_submodule(module_suffix)
        except AttributeError as exc:
            raise IncompatibleAdapterError(f"layer {i} has no module {module_suffix!r}") from exc
        if not isinstance(module, nn.Linear):
            raise IncompatibleAdapterError(f"{prefix}.{i}.{module_suffix} is {type(module).__name__}, not Linear")
        targets.append(TargetModule(i, f"{prefix}.{i}.{module_suffix}", module.in_features, module.out_features))
    return targets

"""What every lora-memory hypernetwork shares: identity and ``save_pretrained``/``from_pretrained``.

A saved hypernetwork is a fixed-name JSON config beside a fixed-name safetensors
file (never a pickle, so loading an untrusted checkpoint runs no code). The
config carries the base model's fingerprint, so a hypernetwork refuses to write
adapters for a model it was not trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..base import LoadedModel
from ..errors import CorruptEntryError, IncompatibleAdapterError
from ..saved_config import SavedConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

H = TypeVar("H", bound="PretrainedHypernet")


class PretrainedHypernet(nn.Module):
    """Base class: ``self.config`` is a pydantic config with ``base_fingerprint``, ``base_name``,
    ``to_dict`` and ``from_dict``; subclasses set :attr:`config_class` and :attr:`kind`.
    """

    config_class: ClassVar[type[SavedConfig]]
    kind: ClassVar[str] = "hypernetwork"

    def __init__(self, config: Any):
        super().__init__()
        self.config = config
        self._fingerprint: str | None = None

    @classmethod
    def class_for(cls: type[H], config: Any) -> type[H]:
        """The class that builds a hypernetwork of ``config`` (a subclass may pick a variant by config)."""
        return cls

    def check_base(self, base: LoadedModel) -> None:
        """Raise :class:`IncompatibleAdapterError` unless ``base`` is the model this was built for."""
        want = self.config.base_fingerprint
        if want is not None and want != base.fingerprint:
            raise IncompatibleAdapterError(
                f"this {self.kind} was built for base model {self.config.base_name!r} (fingerprint {want}), "
                f"not {base.name!r} (fingerprint {base.fingerprint})"
            )

    @property
    def fingerprint(self) -> str:
        """A hash of the config and weights; part of every adapter cache key."""
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
            for name, tensor in sorted(self.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().float().cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def invalidate_fingerprint(self) -> None:
        """Forget the cached fingerprint (call after changing the weights, as training does)."""
        self._fingerprint = None

    def _metadata(self) -> dict[str, Any]:
        return {"base_model": self.config.base_name, "base_fingerprint": self.config.base_fingerprint}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (no pickles)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        (directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2))
        return directory

    @classmethod
    def from_pretrained(cls: type[H], directory: str | Path, base: LoadedModel | None = None,
                        device: str | torch.device = "cpu") -> H:
        """Load a saved hypernetwork; with ``base`` given, check it was built for that model.

        Raises:
            FileNotFoundError: the directory or a file is missing.
            CorruptEntryError: the files cannot be parsed or do not fit the config.
            IncompatibleAdapterError: ``base`` is not the model it was built for.
        """
        directory = Path(directory)
        try:
            config = cls.config_class.from_dict(json.loads((directory / CONFIG_NAME).read_text()))
            tensors = load_file(str(directory / WEIGHTS_NAME), device=str(device))
            model = cls.class_for(config)(config)
            model.load_state_dict(tensors, strict=True)
        except (json.JSONDecodeError, SafetensorError, ValueError, RuntimeError) as exc:
            raise CorruptEntryError(f"cannot read {cls.kind} in {directory}: {exc}") from exc
        model.to(device).eval()
        if base is not None:
            model.check_base(base)
        return model

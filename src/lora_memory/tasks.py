"""Task adapters: a plain-language task description -> a LoRA adapter, via Text-to-LoRA.

``task_adapter(base, "Answer with one word.")`` returns an adapter that steers
the base model toward the described task without the description taking
prompt space. The shipped T2L checkpoint for the embedded model is used by
default, loaded once per base model and reused.

Example:
    >>> base = load_base_model()  # doctest: +SKIP
    >>> adapter = task_adapter(base, "Give the plural form of the noun.")  # doctest: +SKIP
    >>> generate(base.model, base.tokenizer, "mouse", adapter=adapter).text  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import weakref

from torch import nn

from .adapter import LoRAAdapter
from .base import LoadedModel
from .checkpoints import default_t2l_dir
from .errors import ModelNotFoundError
from .hypernet.pretrained import CONFIG_NAME
from .hypernet.t2l import TextToLoRA

_LOADED: weakref.WeakKeyDictionary[nn.Module, TextToLoRA] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def default_t2l(base: LoadedModel) -> TextToLoRA:
    """The shipped T2L, loaded once per base model and cached while the model lives.

    Raises:
        ModelNotFoundError: no checkpoint ships with this installation.
        IncompatibleAdapterError: the shipped checkpoint was trained for another base model.
    """
    with _GUARD:
        t2l = _LOADED.get(base.model)
        if t2l is None:
            directory = default_t2l_dir()
            if not (directory / CONFIG_NAME).is_file():
                raise ModelNotFoundError(
                    f"no Text-to-LoRA checkpoint at {directory}; train one with "
                    "`python -m lora_memory.training.t2l.train` and pass it as t2l="
                )
            t2l = TextToLoRA.from_pretrained(directory, base=base, device=base.device)
            _LOADED[base.model] = t2l
    return t2l


def task_adapter(base: LoadedModel, description: str, t2l: TextToLoRA | None = None) -> LoRAAdapter:
    """The LoRA adapter for a task described in plain language.

    Args:
        base: the base model the adapter is for.
        description: what the model should do, e.g. "Answer with a number.".
        t2l: a Text-to-LoRA hypernetwork; default: the shipped one for ``base``.

    Raises:
        ValueError: the description is empty.
        ModelNotFoundError: no ``t2l`` given and none ships with this installation.
        IncompatibleAdapterError: the T2L was built for another base model.
    """
    if not description or not description.strip():
        raise ValueError("the task description is empty")
    return (t2l or default_t2l(base)).task_adapter(base, description)

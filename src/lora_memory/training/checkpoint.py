"""Resumable training checkpoints as safetensors + JSON (no pickles).

A checkpoint directory holds the hypernetwork (``save_pretrained`` layout), the
optimizer's tensors (``optimizer.safetensors``) and the rest of the state as JSON
(``trainer_state.json``: step, param-group settings, the run config). Data is a
pure function of (seed, step), so no data-loader state is needed. Checkpoints are
written to a temporary directory and renamed into place, so an interrupted write
never damages the previous checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..hypernet.pretrained import PretrainedHypernet

OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "trainer_state.json"


def save_checkpoint(directory: Path, hypernet: PretrainedHypernet, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any]) -> None:
    """Atomically replace ``directory`` with the current training state."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hypernet.save_pretrained(tmp)
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, param_state in opt["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    save_file(tensors, str(tmp / OPTIMIZER_NAME), metadata={"format": "pt"})
    payload = {**state, "param_groups": opt["param_groups"], "optimizer_scalars": scalars}
    (tmp / STATE_NAME).write_text(json.dumps(payload, indent=2))
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def read_state(directory: Path) -> dict[str, Any]:
    """The JSON part of a checkpoint (step, run config, ...)."""
    return json.loads((directory / STATE_NAME).read_text())


def restore_optimizer(directory: Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore ``optimizer`` in place from a checkpoint.

    ``optimizer`` must be built over the checkpoint's hypernetwork
    (``DocToLoRA.from_pretrained(directory)``) with the same parameter groups.
    """
    payload = read_state(directory)
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in load_file(str(directory / OPTIMIZER_NAME)).items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    for key, value in payload["optimizer_scalars"].items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": payload["param_groups"]})

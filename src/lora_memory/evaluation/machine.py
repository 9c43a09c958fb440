"""What a report's numbers were measured on: CPU, cores, threads, library versions, load, base model."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from ..base import LoadedModel


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> str:
    """The 1/5/15-minute load averages, or n/a where the platform has none."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def machine_info(base: LoadedModel | None = None) -> dict[str, Any]:
    """The machine, the libraries and (with ``base``) the base model a report was measured with."""
    import transformers

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load_average(),
    }
    if base is not None:
        info |= {"base": base.name, "dtype": str(base.dtype).removeprefix("torch.")}
    return info


def machine_line(info: dict[str, Any]) -> str:
    """``info`` in one line for a report's header."""
    return (f"{info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch thread(s), torch {info['torch']}, "
            f"load average {info['load_average_at_start']} at the start)")

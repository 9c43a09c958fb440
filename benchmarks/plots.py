"""Matplotlib figures (Agg backend: no display needed): medians with min-max error bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .common import Stats  # noqa: E402

DPI = 120


def _error_bars(stats: Sequence[Stats]) -> tuple[list[float], list[list[float]]]:
    medians = [s.median for s in stats]
    return medians, [[m - s.min for m, s in zip(medians, stats)], [s.max - m for m, s in zip(medians, stats)]]


def line_plot(path: Path, title: str, xlabel: str, ylabel: str, series: dict[str, tuple[list[int], list[Stats]]],
              *, dashed: Sequence[str] = (), log: bool = True, note: str = "") -> Path:
    """One line per series (x, stats), error bars from min to max; ``dashed`` marks extrapolated series."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (xs, stats) in series.items():
        ys, err = _error_bars(stats)
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name,
                    linestyle="--" if name in dashed else "-")
    if log:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted({x for points, _ in series.values() for x in points})
        ax.set_xticks(ticks, [_tokens(x) for x in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, alpha=0.7)
    return _save(fig, path)


def _tokens(n: int) -> str:
    """256, 1K, 32K: token counts as axis labels."""
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def grouped_bars(path: Path, title: str, ylabel: str, groups: list[str], series: dict[str, list[Stats | float]],
                 *, log: bool = False, note: str = "") -> Path:
    """Bars per group (e.g. document length), one colour per series; Stats get min-max error bars."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        if values and isinstance(values[0], Stats):
            ys, err = _error_bars(values)  # type: ignore[arg-type]
            ax.bar(xs, ys, width, yerr=err, capsize=3, label=name)
        else:
            ax.bar(xs, values, width, label=name)  # type: ignore[arg-type]
    ax.set_xticks(range(len(groups)), groups)
    if log:
        ax.set_yscale("log")
    ax.set(title=title, ylabel=ylabel)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, alpha=0.7)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path

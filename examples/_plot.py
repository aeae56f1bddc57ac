"""Curves of the examples as a small PNG, when matplotlib is installed (the `examples` extra)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence


def default_path(plot: str | None, checkpoint: str) -> str:
    """``--plot``: the given path, or (None) ``curves.png`` in the checkpoint directory (no plot
    when no checkpoint is written: ``--checkpoint ''``); '' means no plot."""
    if plot is not None:
        return plot
    return os.path.join(checkpoint, "curves.png") if checkpoint else ""


def save_curves(path: str, title: str, panels: Sequence[tuple[str, str, Sequence[float]]]) -> bool:
    """Plots each ``(x label, y label, values)`` panel side by side into `path`.

    Returns False (after a one-line message) when matplotlib is not installed or `path` is ''.
    """
    if not path:
        return False
    if importlib.util.find_spec("matplotlib") is None:
        print("plot skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for ax, (xlabel, ylabel, values) in zip(axes[0], panels):
        xs = range(1, len(values) + 1)
        ax.plot(xs, list(values), marker="o" if len(values) < 30 else None)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    print(f"curves written to {path}", file=sys.stderr)
    return True

"""Matplotlib figures from plain metric histories (no Optuna, no MLflow)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["learning_curves"]


def learning_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], title: str = "") -> Figure:
    """Accuracy and loss per epoch (train dashed, val solid) for one or more labelled histories."""
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (label, history) in enumerate(histories.items()):
        colour = f"C{i % 10}"
        epochs = [r["epoch"] for r in history]
        for ax, key in ((acc, "acc"), (loss, "loss")):
            ax.plot(epochs, [r[f"train_{key}"] for r in history], "--", color=colour, alpha=0.7)
            vals = [r.get(f"val_{key}") for r in history]
            if any(v is not None for v in vals):
                ax.plot(epochs, [float("nan") if v is None else v for v in vals], "-", color=colour, label=label)
            elif not ax.get_legend_handles_labels()[1] or label not in ax.get_legend_handles_labels()[1]:
                ax.plot([], [], "--", color=colour, label=label)
    acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy (train dashed, val solid)")
    loss.set(xlabel="epoch", ylabel="loss", title="loss (train dashed, val solid)")
    acc.legend(fontsize=7, loc="lower right")
    for ax in (acc, loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_figure(classes: Sequence[str], matrix: Sequence[Sequence[int]]) -> Figure:
    """A confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true")
    top = max(max(row) for row in matrix) or 1
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(matrix[i][j]),
                ha="center",
                va="center",
                fontsize=6,
                color="white" if matrix[i][j] > top / 2 else "black",
            )
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)

"""Matplotlib figures from plain metric histories (no Optuna, no MLflow)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = [
    "learning_curves",
    "confusion_figure",
    "prediction_figure",
    "history_figure",
    "params_figure",
    "anytime_figure",
    "close",
]


def learning_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]], title: str = "") -> Figure:
    """Accuracy and loss per epoch (train dashed, val solid) for one or more labelled histories."""
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (label, history) in enumerate(histories.items()):
        colour = f"C{i % 10}"
        epochs = [r["epoch"] for r in history]
        for ax, key in ((acc, "acc"), (loss, "loss")):  # markers: a diverged run of one epoch still shows
            ax.plot(epochs, [r[f"train_{key}"] for r in history], "--", color=colour, alpha=0.7, marker=".")
            vals = [r.get(f"val_{key}") for r in history]
            if any(v is not None for v in vals):
                ax.plot(epochs, [float("nan") if v is None else v for v in vals], "-", color=colour, label=label, marker=".")
            elif not ax.get_legend_handles_labels()[1] or label not in ax.get_legend_handles_labels()[1]:
                ax.plot([], [], "--", color=colour, label=label)
    acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy (train dashed, val solid)")
    loss.set(xlabel="epoch", ylabel="loss", title="loss (train dashed, val solid)")
    top = _loss_ceiling(histories)
    if top is not None:  # one exploding run must not flatten every other curve
        loss.set_ylim(0, top)
    acc.legend(fontsize=7, loc="lower right")
    for ax in (acc, loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _loss_ceiling(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> float | None:
    """The loss axis's top when some loss lies far above the rest: twice the smaller of the largest
    first-epoch loss and four times the median loss (the scale of the curves that learn); None
    when every loss fits below it."""
    import math

    starts = [float(h[0]["train_loss"]) for h in histories.values() if h and math.isfinite(float(h[0]["train_loss"]))]
    losses = [float(v) for h in histories.values() for r in h for v in (r.get("train_loss"), r.get("val_loss")) if v is not None]
    finite = [v for v in losses if math.isfinite(v)]
    if not starts or not finite:
        return None
    ceiling = 2.0 * min(max(starts), sorted(finite)[len(finite) // 2] * 4)
    return ceiling if max(finite) > ceiling else None


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


def prediction_figure(images: Sequence[Any], names: Sequence[tuple[str, str]], cols: int = 8) -> Figure:
    """A grid of images (HWC uint8 arrays) titled "predicted (true)", green when right, red when wrong."""
    rows = (len(images) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 2.0 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(images):
            continue
        ax.imshow(images[i])
        predicted, true = names[i]
        ax.set_title(f"{predicted}\n({true})", fontsize=7, color="green" if predicted == true else "red")
    fig.suptitle("predicted (true) on validation images", fontsize=9)
    fig.tight_layout()
    return fig


def history_figure(info: Mapping[str, Sequence[float]], title: str) -> Figure:
    """Each trial's value and the best so far (``report.markdown.history_info``)."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(info["trial"], info["value"], "o", alpha=0.6, label="trial value")
    ax.step(info["trial"], info["best"], where="post", color="C3", label="best so far")
    ax.set(xlabel="trial", ylabel="objective", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def params_figure(info: Mapping[str, tuple[str, Sequence[tuple[Any, float]]]], label: Callable[[Any], str] = str) -> Figure:
    """Objective against each parameter (``report.markdown.params_info``): categorical values on a labelled
    axis, log-float ones on a log axis."""
    fig, axes = plt.subplots(1, len(info), figsize=(3.6 * len(info), 3.2), squeeze=False)
    for ax, (p, (kind, pts)) in zip(axes[0], info.items(), strict=True):
        if kind == "categorical":
            labels = sorted({label(x) for x, _ in pts})
            ax.plot([labels.index(label(x)) for x, _ in pts], [y for _, y in pts], "o", alpha=0.7)
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        else:
            ax.plot([x for x, _ in pts], [y for _, y in pts], "o", alpha=0.7)
            if kind == "log-float":
                ax.set_xscale("log")
        ax.set(xlabel=p, ylabel="objective")
    fig.tight_layout()
    return fig


def anytime_figure(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    target: float | None = None,
    title: str = "",
    xlabel: str = "epochs trained (cumulative)",
    ylabel: str = "best val_acc of a complete trial",
    dashed: Collection[str] = (),
) -> Figure:
    """Best value found so far against the training spent (``bench.search_replay.anytime_info``), one
    line per strategy (those in ``dashed``, the references, dashed); ``target`` as a dotted
    horizontal line."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, (label, (x, y)) in enumerate(curves.items()):
        ax.step(x, y, where="post", color=f"C{i % 10}", ls="--" if label in dashed else "-", lw=1.4, label=label)
    if target is not None:
        ax.axhline(target, color="grey", ls=":", lw=1, label=f"target {target:.3f}")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)

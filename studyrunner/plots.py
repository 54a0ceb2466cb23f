"""Matplotlib figures from plain metric histories (no Optuna, no MLflow)."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter  # noqa: E402

__all__ = [
    "learning_curves",
    "confusion_figure",
    "prediction_figure",
    "history_figure",
    "params_figure",
    "anytime_figure",
    "population_figure",
    "close",
    "decade_axis",
    "CJK_FAMILIES",
    "STOPPED_STYLE",
]

# Class names can be in any script. DejaVu Sans (matplotlib's own) covers Latin, Greek and Cyrillic;
# matplotlib >= 3.6 falls back glyph by glyph along the families of ``font.family`` (not along the
# generic ``sans-serif`` list, which resolves to one font), so CJK names render in Noto (Debian's
# fonts-noto-cjk) instead of as empty boxes.
CJK_FAMILIES = ("Noto Sans CJK JP", "Noto Sans CJK SC")

# Trials that stopped early, drawn at their last reported value: (marker, colour, legend label).
STOPPED_STYLE = {
    "PRUNED": ("x", "grey", "pruned (last reported value)"),
    "DIVERGED": ("v", "tab:brown", "diverged (last reported value)"),
}


def _use_cjk_fallback() -> None:
    """DejaVu Sans first, then the CJK families that are installed (one that is not would log a
    "font family not found" warning on every text drawn). Matplotlib caches its font list on first
    use, so a font installed after that is unknown to it until the cache is rebuilt: such Noto CJK
    files are registered here (in memory) from the system's font folders."""
    known = {f.name for f in font_manager.fontManager.ttflist}
    if not known & set(CJK_FAMILIES):
        for path in font_manager.findSystemFonts():
            if "SansCJK" in path.replace(" ", "") and "Mono" not in path:
                font_manager.fontManager.addfont(path)
        known = {f.name for f in font_manager.fontManager.ttflist}
    found = [f for f in CJK_FAMILIES if f in known]
    rest = [f for f in plt.rcParams["font.sans-serif"] if f not in ("DejaVu Sans", *CJK_FAMILIES)]
    plt.rcParams["font.sans-serif"] = ["DejaVu Sans", *CJK_FAMILIES, *rest]
    plt.rcParams["font.family"] = ["DejaVu Sans", *found]


_use_cjk_fallback()


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


def prediction_figure(
    images: Sequence[Any], names: Sequence[tuple[str, str]], cols: int = 8, title: str = "predicted (true) on validation images"
) -> Figure:
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
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _stopped(ax: Axes, points: Sequence[tuple[float, float, str]], labelled: bool = True) -> None:
    """Pruned and diverged trials at their last reported value, one marker per state."""
    for state, (marker, colour, label) in STOPPED_STYLE.items():
        xs = [x for x, _, s in points if s == state]
        ys = [y for _, y, s in points if s == state]
        if xs:
            ax.plot(xs, ys, marker, color=colour, alpha=0.8, ls="none", label=label if labelled else None)


def history_figure(info: Mapping[str, Sequence[Any]], title: str, ylabel: str = "objective") -> Figure:
    """Each complete trial's value, the best so far, and the pruned and diverged trials at their
    last reported value (``report.markdown.history_info``); ``ylabel``: the study's metric."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(info["trial"], info["value"], "o", alpha=0.6, label="complete trial")
    ax.step(info["trial"], info["best"], where="post", color="C3", label="best so far")
    _stopped(ax, [(float(n), v, s) for n, s, v in info.get("stopped", ())])
    ax.set(xlabel="trial", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def decade_axis(ax: Axes, values: Sequence[float]) -> None:
    """A log x axis labelled at whole decades only, spanning at least one: matplotlib labels minor
    ticks when the range is under a decade, and those labels run into each other."""
    lows = [math.log10(v) for v in values if v > 0]
    if not lows:
        return
    lo, hi = math.floor(min(lows)), math.ceil(max(lows))
    hi = max(hi, lo + 1)
    ax.set_xscale("log")
    ax.set_xlim(10 ** (lo - 0.05), 10 ** (hi + 0.05))  # the decades at both ends stay inside (and labelled)
    ax.xaxis.set_major_locator(LogLocator(base=10))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
    ax.xaxis.set_minor_formatter(NullFormatter())


def params_figure(
    info: Mapping[str, tuple[str, Sequence[tuple[Any, float, str]]]],
    label: Callable[[Any], str] = str,
    ylabel: str = "objective",
) -> Figure:
    """The metric against each parameter (``report.markdown.params_info``: value, metric, state per
    trial): complete trials as dots, pruned and diverged ones at their last reported value;
    categorical values on a labelled axis, log-float ones on a log axis labelled at decades."""
    fig, axes = plt.subplots(1, len(info), figsize=(3.6 * len(info), 3.2), squeeze=False)
    for i, (ax, (p, (kind, pts))) in enumerate(zip(axes[0], info.items(), strict=True)):
        labels = sorted({label(x) for x, _, _ in pts})
        xs = [labels.index(label(x)) if kind == "categorical" else x for x, _, _ in pts]
        done = [(x, y) for x, (_, y, s) in zip(xs, pts, strict=True) if s == "COMPLETE"]
        ax.plot([x for x, _ in done], [y for _, y in done], "o", alpha=0.7, label="complete trial")
        _stopped(ax, [(x, y, s) for x, (_, y, s) in zip(xs, pts, strict=True)], labelled=i == 0)
        if kind == "categorical":
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        elif kind == "log-float":
            decade_axis(ax, [float(x) for x in xs])
        ax.set(xlabel=p, ylabel=ylabel)
    if any(s != "COMPLETE" for _, pts in info.values() for _, _, s in pts):
        axes[0][0].legend(fontsize=7)
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


def population_figure(
    members: Mapping[str, Sequence[Mapping[str, Any]]], exploits: Sequence[tuple[str, int]], title: str
) -> Figure:
    """PBT: each member's learning rate per epoch (log scale) and validation accuracy, one colour per
    member (its whole lineage); a dot where the member copied another's state and perturbed it."""
    fig, (lr_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (label, history) in enumerate(members.items()):
        colour = f"C{i % 10}"
        epochs = [r["epoch"] for r in history]
        lr_ax.step(epochs, [r["lr"] for r in history], where="pre", color=colour, label=label)
        acc_ax.plot(epochs, [float("nan") if r.get("val_acc") is None else r["val_acc"] for r in history], color=colour)
        by_epoch = {r["epoch"]: r for r in history}
        for epoch in (e for m, e in exploits if m == label and e + 1 in by_epoch):
            lr_ax.plot([epoch + 1], [by_epoch[epoch + 1]["lr"]], "o", color=colour, markersize=4)
            acc_ax.plot([epoch + 1], [by_epoch[epoch + 1].get("val_acc") or float("nan")], "o", color=colour, markersize=4)
    lr_ax.set_yscale("log")
    lr_ax.set(xlabel="epoch", ylabel="learning rate", title="learning rate (dots: exploit + explore)")
    acc_ax.set(xlabel="epoch", ylabel="val accuracy", title="validation accuracy")
    lr_ax.legend(fontsize=7, loc="best")
    for ax in (lr_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)

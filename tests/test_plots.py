"""Figures: one diverged run does not flatten everyone's learning curves; stopped trials, metric
names, log axes and CJK class names are drawn as the report needs them (read from the figures)."""

import math
import warnings

import pytest
from matplotlib import font_manager

from studyrunner import plots

from .conftest import history


def test_a_diverged_run_does_not_ruin_the_loss_axis():
    learners = {f"trial {i}": history([0.3 + i / 20, 0.5 + i / 20, 0.6 + i / 20]) for i in range(3)}
    diverged = [{"epoch": 1, "train_loss": 3.0e6, "train_acc": 0.1, "val_loss": None, "val_acc": None}]
    fig = plots.learning_curves({**learners, "trial 9 (diverged)": diverged})
    _, loss = fig.axes
    assert loss.get_ylim()[1] < 10  # the learners' losses (below 1) stay readable
    assert any(len(line.get_xdata()) == 1 for line in loss.lines)  # the one-epoch run is drawn (a marker)
    plots.close(fig)
    fig = plots.learning_curves(learners)
    assert fig.axes[1].get_ylim()[1] < 2  # nothing to cut: matplotlib's own limits
    plots.close(fig)


def test_the_history_draws_stopped_trials_in_their_own_marker_and_names_the_metric():
    info = {
        "trial": [0.0, 2.0],
        "value": [0.55, 0.35],
        "best": [0.55, 0.55],
        "stopped": [(1, "DIVERGED", 0.05), (3, "PRUNED", 0.07)],
    }
    fig = plots.history_figure(info, "h", "val_acc")
    (ax,) = fig.axes
    assert ax.get_ylabel() == "val_acc"
    by_label = {line.get_label(): line for line in ax.lines}
    pruned = by_label["pruned (last reported value)"]
    assert pruned.get_marker() == "x" and list(pruned.get_xdata()) == [3.0] and list(pruned.get_ydata()) == [0.07]
    assert list(by_label["diverged (last reported value)"].get_ydata()) == [0.05]
    assert "pruned (last reported value)" in [t.get_text() for t in ax.get_legend().get_texts()]
    plots.close(fig)


def _decade_labels(ax) -> tuple[list[str], list[str]]:
    """The x axis's visible major and minor tick labels after drawing."""
    ax.figure.canvas.draw()
    lo, hi = ax.get_xlim()
    major = [t.get_text() for t in ax.get_xticklabels() if t.get_text() and lo <= t.get_position()[0] <= hi]
    minor = [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    return major, minor


def test_a_log_parameter_axis_is_labelled_at_decades_only():
    points = [(1.0e-3, 0.5, "COMPLETE"), (1.2e-3, 0.6, "COMPLETE"), (1.5e-3, 0.4, "PRUNED")]  # under a decade
    fig = plots.params_figure(
        {"optim.lr": ("log-float", points), "optim.name": ("categorical", [("adam", 0.5, "COMPLETE")])}, ylabel="val_acc"
    )
    ax = fig.axes[0]
    major, minor = _decade_labels(ax)
    assert not minor  # matplotlib labels minor ticks under a decade: "10⁻³1.1×10⁻³1.2×10⁻³..."
    assert major == ["$\\mathdefault{10^{-3}}$", "$\\mathdefault{10^{-2}}$"]
    for tick in ax.get_xticks():
        if ax.get_xlim()[0] <= tick <= ax.get_xlim()[1]:
            assert math.log10(tick) == round(math.log10(tick))
    assert [a.get_ylabel() for a in fig.axes] == ["val_acc", "val_acc"]
    assert "pruned (last reported value)" in [t.get_text() for t in ax.get_legend().get_texts()]
    plots.close(fig)


def _cjk_installed() -> bool:
    for family in plots.CJK_FAMILIES:
        try:
            font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
            return True
        except ValueError:
            continue
    return False


@pytest.mark.skipif(not _cjk_installed(), reason="no Noto Sans CJK font installed (Debian: fonts-noto-cjk)")
def test_cjk_class_names_are_drawn_with_a_cjk_font():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = plots.confusion_figure(["猫", "犬", "cat"], [[3, 1, 0], [0, 4, 1], [1, 0, 2]])
        fig.canvas.draw()
    missing = [str(w.message) for w in caught if "Glyph" in str(w.message)]
    assert not missing  # DejaVu Sans alone draws them as empty boxes ("Glyph 29483 ... missing")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["猫", "犬", "cat"]
    plots.close(fig)

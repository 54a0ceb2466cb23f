"""Figures: one diverged run does not flatten everyone's learning curves."""

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

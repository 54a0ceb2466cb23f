"""The stopping rules as pure functions: no learning (a trial) and convergence (a study)."""

from dataclasses import dataclass

import pytest

from studyrunner.search.stopping import chance_band, converged, no_learning


@dataclass
class Rec:
    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float | None


def test_chance_band_is_chance_plus_two_binomial_errors():
    assert chance_band(10, 1000) == pytest.approx(0.1 + 2 * (0.09 / 1000) ** 0.5)
    assert chance_band(2, 10**9) == pytest.approx(0.51)  # at least one point


def test_fires_on_a_constant_output_model():
    flat = [Rec(1, 2.3031, 0.101, 0.100), Rec(2, 2.3029, 0.099, 0.100)]
    reason = no_learning(flat, classes=10, n_eval=1000, after=2)
    assert reason.startswith("no learning: after epoch 2") and "ln(10)" in reason


@pytest.mark.parametrize(
    ("history", "why"),
    [
        ([Rec(1, 2.28, 0.12, 0.14), Rec(2, 2.26, 0.15, 0.16)], "a slow learner above chance"),
        ([Rec(1, 2.29, 0.10, 0.10), Rec(2, 2.20, 0.11, 0.11)], "at chance, but its loss is moving"),
        ([Rec(1, 2.303, 0.10, 0.10)], "before the rule's epoch"),
    ],
)
def test_does_not_fire(history, why):
    assert no_learning(history, classes=10, n_eval=1000, after=2) == "", why


def test_fires_when_the_loss_has_not_moved_though_a_tiny_val_set_is_above_the_band():
    """16 validation images make the chance band wide; a loss frozen at ln(4) still says it all."""
    frozen = [Rec(1, 1.38621, 0.5, 0.5), Rec(2, 1.38621, 0.5, 0.5)]
    assert "the loss has not moved" in no_learning(frozen, classes=4, n_eval=16, after=2)


def test_off_at_zero_and_uses_train_accuracy_without_validation():
    flat = [Rec(1, 1.39, 0.25, None), Rec(2, 1.39, 0.26, None)]
    assert no_learning(flat, classes=4, n_eval=512, after=0) == ""
    assert no_learning(flat, classes=4, n_eval=512, after=2).startswith("no learning")


def test_converged_when_the_last_trials_add_no_more_than_the_margin():
    values = [0.50, 0.60, 0.61, 0.605, 0.612]
    assert converged(values, maximize=True, window=3, margin=0.02).startswith("converged: the best value improved by 0.0120")
    assert converged(values, maximize=True, window=3, margin=0.005) == ""
    assert converged(values, maximize=True, window=5, margin=1.0) == ""  # not enough trials yet
    assert converged([1.0, 0.5, 0.49], maximize=False, window=1, margin=0.02).startswith("converged")
    assert converged([1.0, 0.5, 0.40], maximize=False, window=1, margin=0.02) == ""


def test_a_loss_above_chance_that_falls_is_learning_and_one_that_stays_is_named_as_above():
    """A fresh head that starts far off (loss 5.9 for 4 classes) and comes down is learning, whatever
    its accuracy so far; the same loss standing still is stopped, and the reason says "above"."""
    falling = [Rec(1, 5.91, 0.25, 0.25), Rec(2, 5.48, 0.26, 0.25)]
    assert no_learning(falling, classes=4, n_eval=400, after=2) == ""
    stuck = [Rec(1, 5.48, 0.25, 0.25), Rec(2, 5.4801, 0.25, 0.25)]
    reason = no_learning(stuck, classes=4, n_eval=400, after=2)
    assert "is above ln(4) = 1.386 and is not falling" in reason and "has not left" not in reason
    near = [Rec(1, 1.3900, 0.25, 0.25), Rec(2, 1.3890, 0.25, 0.25)]  # at chance level and at chance accuracy
    assert "has not left ln(4)" in no_learning(near, classes=4, n_eval=400, after=2)

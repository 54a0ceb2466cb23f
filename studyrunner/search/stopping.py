"""Rules that stop a trial or a study early, as pure functions of what was measured.

- ``no_learning``: a trial whose accuracy is still within noise of chance and whose training loss
  still sits at the chance level ln(C) after its first epochs cannot learn at this setting (an
  SGD learning rate far too small or too large, a dead net); it is stopped at once, whatever the
  pruner's warm-up, and recorded PRUNED with the reason.
- ``converged``: a study whose best value has not improved by more than a margin (the seeds'
  noise, or a given number) over its last N finished trials has converged.

Both are used by the objective and the driver, and replayed by the search benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

__all__ = ["EpochLike", "no_learning", "chance_band", "converged", "LOSS_AT_CHANCE", "LOSS_STILL", "LOSS_ABOVE"]

LOSS_AT_CHANCE = 0.98  # a training loss at or above this share of ln(C) has not moved from chance level
LOSS_STILL = 0.001  # a training loss that changed by at most this share since epoch 1 has not moved
LOSS_ABOVE = 1.05  # a loss above this share of ln(C) is above chance level, not at it (a far-off start)


class EpochLike(Protocol):
    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float | None


def chance_band(classes: int, n_eval: int) -> float:
    """The highest accuracy still explained by chance: 1/C plus two binomial standard errors of
    an accuracy measured on ``n_eval`` images (at least one point)."""
    chance = 1.0 / max(classes, 2)
    return chance + max(0.01, 2.0 * math.sqrt(chance * (1 - chance) / max(n_eval, 1)))


def no_learning(history: Sequence[EpochLike], classes: int, n_eval: int, after: int) -> str:
    """The reason the trial cannot learn, or "": from epoch ``after`` on (0 = never), its training
    loss is still at least 98% of ln(C) and either its latest validation accuracy (training
    accuracy without a validation split) is within the chance band or the loss has not moved
    (by 0.1%) since epoch 1. A loss that is falling (by more than 0.1% since epoch 1) is never
    "not learning": a slow learning rate, or a fresh head coming down from a far-off start."""
    if after <= 0 or len(history) < after or classes < 2:
        return ""
    first, last = history[0], history[-1]
    acc = last.val_acc if last.val_acc is not None else last.train_acc
    band, chance_loss = chance_band(classes, n_eval), math.log(classes)
    if not (math.isfinite(last.train_loss) and last.train_loss >= LOSS_AT_CHANCE * chance_loss):
        return ""  # the loss has left chance level: something is being learned
    above = last.train_loss > LOSS_ABOVE * chance_loss
    if len(history) >= 2 and last.train_loss < first.train_loss * (1 - LOSS_STILL):
        return ""  # falling, at chance level or from a far-off start above it: it is learning, slowly
    still = len(history) >= 2 and abs(last.train_loss - first.train_loss) <= LOSS_STILL * first.train_loss
    if acc > band and not still:
        return ""
    why = f"accuracy {acc:.4f} is within chance ({band:.4f} for {classes} classes)" if acc <= band else "the loss has not moved"
    where = "is above" if above else "has not left"
    tail = " and is not falling" if above else ""
    return (
        f"no learning: after epoch {last.epoch} {why} and the training loss {last.train_loss:.3f} "
        f"{where} ln({classes}) = {chance_loss:.3f}{tail}"
    )


def converged(values: Sequence[float], maximize: bool, window: int, margin: float) -> str:
    """The reason to stop a study, or "": ``values`` are the finished trials' values in the order
    they finished; the best of all of them beats the best before the last ``window`` by no more
    than ``margin``."""
    if window <= 0 or len(values) <= window:
        return ""
    sign = 1.0 if maximize else -1.0
    before = max(sign * v for v in values[:-window])
    best = max(sign * v for v in values)
    gain = best - before
    if gain <= margin:
        return (
            f"converged: the best value improved by {gain:.4f} (at most {margin:.4f} counts as noise) "
            f"over the last {window} finished trials"
        )
    return ""

"""Trial states: one enum and one mapping, Optuna state + user attributes -> studyrunner state
-> MLflow run status. The driver, the objective, results, the live view and tracking all ask
this module; none of them derives a state on its own.

Optuna knows COMPLETE, PRUNED, FAIL, RUNNING and WAITING. studyrunner tells apart what those
hide, from the user attribute ``outcome`` the objective records:

* DIVERGED - stored as PRUNED (samplers still learn from it), outcome ``diverged``;
* INTERRUPTED - stored as FAIL, outcome ``interrupted`` (Ctrl-C; the study is resumable);
* CANCELLED - stored as FAIL, outcome ``surplus``: a parallel worker's trial that would have taken
  the study past its ``n_trials``, stopped before it trained;
* IMPORTED - stored as COMPLETE, outcome ``imported``: a finished trial of an earlier study added by
  ``warm_start`` so that the sampler starts informed; it does not count towards ``n_trials``.

Plain strings only: this module imports neither Optuna nor MLflow, so every layer can use it.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar

__all__ = [
    "TrialState",
    "FINISHED",
    "OPTUNA_FINISHED",
    "DEAD_WORKER_STATUS",
    "state_of",
    "trial_state",
    "count_states",
    "finished_count",
    "first_value",
    "best_of",
]


class TrialState(str, enum.Enum):
    COMPLETE = "COMPLETE"  # trained to the end; value = the objective
    PRUNED = "PRUNED"  # stopped by the pruner
    DIVERGED = "DIVERGED"  # the training loss became non-finite or exploded
    FAIL = "FAIL"  # an exception; retried with the same parameters
    INTERRUPTED = "INTERRUPTED"  # Ctrl-C / SIGTERM while it ran
    CANCELLED = "CANCELLED"  # a surplus trial of a parallel worker, never trained
    IMPORTED = "IMPORTED"  # an earlier study's finished trial, added by warm_start (not trained here)
    RUNNING = "RUNNING"
    WAITING = "WAITING"  # queued (a retry, or an enqueued configuration)

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        """Counts towards the study's ``n_trials``."""
        return self in FINISHED

    @property
    def mlflow_status(self) -> str:
        """The status a trial's MLflow run ends with: FINISHED only for COMPLETE."""
        return _MLFLOW_STATUS[self]


FINISHED = frozenset({TrialState.COMPLETE, TrialState.PRUNED, TrialState.DIVERGED})
OPTUNA_FINISHED = ("COMPLETE", "PRUNED")  # Optuna state names of finished trials

_MLFLOW_STATUS = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "KILLED",
    TrialState.DIVERGED: "FAILED",
    TrialState.FAIL: "FAILED",
    TrialState.INTERRUPTED: "KILLED",
    TrialState.CANCELLED: "KILLED",
    TrialState.IMPORTED: "FINISHED",
    TrialState.RUNNING: "RUNNING",
    TrialState.WAITING: "SCHEDULED",
}
DEAD_WORKER_STATUS = "KILLED"  # the MLflow run of a FAIL trial whose worker died: ended from outside, not by its training
_BY_OUTCOME = {
    ("PRUNED", "diverged"): TrialState.DIVERGED,
    ("FAIL", "interrupted"): TrialState.INTERRUPTED,
    ("FAIL", "surplus"): TrialState.CANCELLED,
    ("COMPLETE", "imported"): TrialState.IMPORTED,
}


class _Trial(Protocol):
    """What this module reads of an ``optuna.trial.FrozenTrial``."""

    @property
    def state(self) -> Any: ...
    @property
    def user_attrs(self) -> dict[str, Any]: ...
    @property
    def values(self) -> list[float] | None: ...


def state_of(optuna_state: str, attrs: Mapping[str, Any]) -> TrialState:
    """The studyrunner state of a trial Optuna holds in ``optuna_state`` with user ``attrs``."""
    outcome = str(attrs.get("outcome") or ("surplus" if attrs.get("surplus") else ""))  # studies from before 0.2
    return _BY_OUTCOME.get((optuna_state, outcome), TrialState(optuna_state))


def trial_state(trial: _Trial) -> TrialState:
    return state_of(trial.state.name, trial.user_attrs)


def count_states(trials: Iterable[_Trial]) -> dict[TrialState, int]:
    """Trials by studyrunner state (states with no trial left out)."""
    return dict(Counter(trial_state(t) for t in trials))


def finished_count(trials: Iterable[_Trial]) -> int:
    """Trials that count towards ``n_trials`` (COMPLETE, PRUNED, DIVERGED)."""
    return sum(1 for t in trials if trial_state(t).finished)


def first_value(trial: _Trial) -> float | None:
    """The trial's value on the study's first (or only) objective; None when it has none."""
    values = trial.values
    return float(values[0]) if values else None


T = TypeVar("T", bound=_Trial)


def best_of(trials: Iterable[T], maximize: bool) -> T | None:
    """The COMPLETE trial (trained in this study, not imported) best on the first objective."""
    done = [t for t in trials if trial_state(t) == TrialState.COMPLETE and first_value(t) is not None]
    sign = 1.0 if maximize else -1.0
    return max(done, key=lambda t: sign * (first_value(t) or 0.0), default=None)

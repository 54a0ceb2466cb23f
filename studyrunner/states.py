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

What happened is an ``Outcome``, and everything studyrunner writes on an Optuna trial is a field
of ``TrialRecord``: the objective writes it, the driver, results, the live view and ``show`` read
it back typed, and no other module spells a user-attribute key.

This module imports neither Optuna nor MLflow, so every layer can use it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

__all__ = [
    "Outcome",
    "TrialRecord",
    "StopReason",
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


class Outcome(str, enum.Enum):
    """What happened to a trial, as the objective records it (user attribute ``outcome``)."""

    COMPLETED = "completed"  # trained every seed to the end
    PRUNED = "pruned"  # stopped by the pruner or the no-learning rule
    DIVERGED = "diverged"  # the training loss became non-finite or exploded
    FAILED = "failed"  # an exception (retried with the same parameters, unless invalid)
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM
    SURPLUS = "surplus"  # a parallel worker's trial past n_trials, stopped before training
    IMPORTED = "imported"  # an earlier study's trial added by warm_start

    def __str__(self) -> str:
        return self.value

    @property
    def optuna_state(self) -> str:
        """The Optuna state the trial ends in (diverged trials are PRUNED, so samplers learn from them)."""
        return _OPTUNA_STATE.get(self, "FAIL")

    @property
    def state(self) -> TrialState:
        return state_of(self.optuna_state, {"outcome": self.value})


_OPTUNA_STATE = {
    Outcome.COMPLETED: "COMPLETE",
    Outcome.PRUNED: "PRUNED",
    Outcome.DIVERGED: "PRUNED",
    Outcome.IMPORTED: "COMPLETE",
}

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
_BY_OUTCOME: dict[tuple[str, str], TrialState] = {  # (Optuna state, outcome) -> what Optuna's state hides
    ("PRUNED", Outcome.DIVERGED): TrialState.DIVERGED,
    ("FAIL", Outcome.INTERRUPTED): TrialState.INTERRUPTED,
    ("FAIL", Outcome.SURPLUS): TrialState.CANCELLED,
    ("COMPLETE", Outcome.IMPORTED): TrialState.IMPORTED,
}


class _TrialLike(Protocol):
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


def trial_state(trial: _TrialLike) -> TrialState:
    return state_of(trial.state.name, trial.user_attrs)


def count_states(trials: Iterable[_TrialLike]) -> dict[TrialState, int]:
    """Trials by studyrunner state (states with no trial left out)."""
    return dict(Counter(trial_state(t) for t in trials))


def finished_count(trials: Iterable[_TrialLike]) -> int:
    """Trials that count towards ``n_trials`` (COMPLETE, PRUNED, DIVERGED)."""
    return sum(1 for t in trials if trial_state(t).finished)


def first_value(trial: _TrialLike) -> float | None:
    """The trial's value on the study's first (or only) objective; None when it has none."""
    values = trial.values
    return float(values[0]) if values else None


T = TypeVar("T", bound=_TrialLike)


def best_of(trials: Iterable[T], maximize: bool) -> T | None:
    """The COMPLETE trial (trained in this study, not imported) best on the first objective."""
    done = [t for t in trials if trial_state(t) == TrialState.COMPLETE and first_value(t) is not None]
    sign = 1.0 if maximize else -1.0
    return max(done, key=lambda t: sign * (first_value(t) or 0.0), default=None)


class _Writable(Protocol):
    def set_user_attr(self, key: str, value: Any) -> None: ...


@dataclass(frozen=True)
class TrialRecord:
    """Everything studyrunner records on an Optuna trial, as its user attributes: one field per key.

    ``TrialRecord.of(trial.user_attrs)`` reads them back typed (absent keys take the defaults);
    ``TrialRecord.write(trial, epochs=3, ...)`` sets them, refusing a name that is not a field."""

    outcome: Outcome | None = None
    reason: str = ""  # why it was pruned or diverged
    fail_reason: str = ""  # why it failed or was interrupted (never empty for a FAIL)
    invalid: bool = False  # bad data or config: the same on every retry, so not retried
    worker: str = ""  # host:pid of the process that ran it
    mlflow_run_id: str = ""
    origin: int | None = None  # the first attempt's number (a retry continues its checkpoint folder)
    resumed_from_epoch: int | None = None  # a retry that continued an earlier attempt's saved state: after this epoch
    retry: int = 0  # how many times these parameters were retried before
    retry_of: int | None = None  # the attempt this one retries
    checkpoint: str = ""  # best-validation checkpoint file ("" when none was written)
    out_dir: str = ""  # the checkpoint folder; history.json is there
    epochs: int | None = None  # epochs trained by the first seed (a diverged epoch counts)
    final_train_acc: float | None = None
    final_val_acc: float | None = None
    values: list[float] | None = None  # the first objective's value per seed
    value_sd: float | None = None  # their standard deviation (0 for one seed)
    test_acc: float | None = None  # mean over seeds, of the best-validation weights
    test_loss: float | None = None
    best_epoch: float | None = None
    best_val_acc: float | None = None
    constraints: list[float] | None = None  # each constraint's value - bound (<= 0 is feasible)
    enqueued: bool = False  # a configuration the sweep's enqueue: listed
    imported_from: str = ""  # STUDY#NUMBER of a warm-start trial
    history: list[dict[str, Any]] | None = None  # per-epoch curve, in studies recorded before history.json
    # sampler pbt: the segment (member, generation, start and end epoch) and what it started from
    # (event start/continue/exploit/restart, parent trial, values, changes as name -> [old, new])
    pbt: dict[str, Any] | None = None

    @classmethod
    def of(cls, attrs: Mapping[str, Any]) -> TrialRecord:
        known = {k: v for k, v in attrs.items() if k in _FIELDS}
        outcome = known.pop("outcome", None) or ("surplus" if attrs.get("surplus") else None)  # studies from before 0.2
        return cls(outcome=Outcome(outcome) if outcome in _OUTCOMES else None, **known)

    @staticmethod
    def write(trial: _Writable, **values: Any) -> None:
        for key, value in values.items():
            if key not in _FIELDS:
                raise KeyError(f"{key!r} is not a TrialRecord field")
            trial.set_user_attr(key, value.value if isinstance(value, enum.Enum) else value)

    @property
    def why(self) -> str:
        """The one-line reason a trial did not complete ("" when it did)."""
        return self.reason or self.fail_reason

    def first_attempt(self, number: int) -> int:
        return number if self.origin is None else int(self.origin)


_FIELDS = frozenset(f.name for f in dataclasses.fields(TrialRecord))
_OUTCOMES = frozenset(o.value for o in Outcome)


class StopReason(str, enum.Enum):
    """Why a study's invocation ended before its target (``StudyOutcome.stopped``)."""

    NONE = ""  # it reached the target
    TIMEOUT = "timeout"
    CONVERGED = "converged"  # the stopping rule (budget.patience)
    FAILURES = "failures"  # too many trials in a row failed
    BUDGET = "budget"  # budget.epochs spent: another full trial would exceed it

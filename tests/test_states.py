"""One mapping: Optuna state + the objective's outcome -> studyrunner state -> MLflow status."""

from types import SimpleNamespace

import pytest

from studyrunner.states import FINISHED, TrialState, count_states, finished_count, state_of, trial_state


def _trial(optuna_state: str, **attrs):
    return SimpleNamespace(state=SimpleNamespace(name=optuna_state), user_attrs=attrs)


@pytest.mark.parametrize(
    ("optuna_state", "attrs", "expected", "mlflow"),
    [
        ("COMPLETE", {"outcome": "completed"}, TrialState.COMPLETE, "FINISHED"),
        ("PRUNED", {"outcome": "pruned"}, TrialState.PRUNED, "KILLED"),
        ("PRUNED", {"outcome": "diverged"}, TrialState.DIVERGED, "FAILED"),
        ("FAIL", {"outcome": "failed"}, TrialState.FAIL, "FAILED"),
        ("FAIL", {}, TrialState.FAIL, "FAILED"),  # a worker that died: no outcome was recorded
        ("FAIL", {"outcome": "interrupted"}, TrialState.INTERRUPTED, "KILLED"),
        ("FAIL", {"outcome": "surplus"}, TrialState.CANCELLED, "KILLED"),
        ("FAIL", {"surplus": True}, TrialState.CANCELLED, "KILLED"),  # how studies before the enum recorded it
        ("RUNNING", {}, TrialState.RUNNING, "RUNNING"),
        ("WAITING", {"retry": 1}, TrialState.WAITING, "SCHEDULED"),
    ],
)
def test_state_and_mlflow_status(optuna_state, attrs, expected, mlflow):
    assert state_of(optuna_state, attrs) is expected
    assert trial_state(_trial(optuna_state, **attrs)) is expected
    assert expected.mlflow_status == mlflow


def test_only_trained_outcomes_count_towards_n_trials():
    assert {TrialState.COMPLETE, TrialState.PRUNED, TrialState.DIVERGED} == FINISHED
    trials = [
        _trial("COMPLETE"),
        _trial("PRUNED", outcome="diverged"),
        _trial("PRUNED"),
        _trial("FAIL", outcome="interrupted"),
        _trial("FAIL", outcome="surplus"),
        _trial("RUNNING"),
    ]
    assert finished_count(trials) == 3
    counts = count_states(trials)
    assert counts[TrialState.DIVERGED] == 1 and counts[TrialState.CANCELLED] == 1 and TrialState.FAIL not in counts
    assert f"{TrialState.DIVERGED}" == "DIVERGED" and TrialState.DIVERGED == "DIVERGED"  # prints and compares as its name


def test_every_state_has_an_mlflow_status():
    assert all(s.mlflow_status in ("FINISHED", "KILLED", "FAILED", "RUNNING", "SCHEDULED") for s in TrialState)

"""Many workers on one study: SQLite on one machine, a real PostgreSQL server, a SIGKILLed worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from studyrunner.states import trial_state

FAST_HEARTBEAT = {"STUDYRUNNER_HEARTBEAT_S": "1", "STUDYRUNNER_GRACE_S": "4"}


def _sweep(tmp_path: Path, tiny_train: str, n_trials: int, epochs: int = 3, name: str = "w", head: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"study: {name}\nbudget: {{n_trials: {n_trials}}}\n{head}"
        + tiny_train.replace("epochs: 3", f"epochs: {epochs}")
        + "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n  seed: {low: 0, high: 1000}\n"
    )
    return path


def _run(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None, timeout: int = 300):
    env = {**os.environ, **(extra_env or {})}
    return subprocess.run(
        [sys.executable, "-m", "studyrunner", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _no_mlflow_run_left_running(tracking: str, study: str) -> list:
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id])
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    return runs


@pytest.mark.long
def test_two_local_workers_share_the_embedded_sqlite_store(tmp_path, tiny_train):
    sweep = _sweep(tmp_path, tiny_train, n_trials=6, epochs=8)  # trials long enough for both workers to get some
    res = _run(["run", str(sweep), "--jobs", "2"], cwd=tmp_path)  # default storage: runs/optuna.db, runs/mlflow.db
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "workers").glob("w-w*.log"))
    assert res.returncode == 0, res.stdout + res.stderr + logs
    assert "database is locked" not in logs + res.stderr
    study = optuna.load_study(study_name="w", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    states = [trial_state(t) for t in study.trials]
    assert states.count("COMPLETE") == 6 and "FAIL" not in states
    assert len({t.user_attrs["worker"] for t in study.trials if trial_state(t) == "COMPLETE"}) == 2
    runs = _no_mlflow_run_left_running(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "w")
    assert len([r for r in runs if r.data.tags.get("state") == "COMPLETE"]) == 6


@pytest.mark.long
@pytest.mark.postgres
def test_three_workers_on_postgres_finish_exactly_n_trials(tmp_path, tiny_train, pg_url):
    sweep = _sweep(tmp_path, tiny_train, n_trials=7, epochs=8, name="pg3")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = _run(["run", str(sweep), "--jobs", "3", "--storage", pg_url, "--tracking-uri", tracking], cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    study = optuna.load_study(study_name="pg3", storage=pg_url)
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 7
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert {trial_state(t) for t in study.trials} <= {"COMPLETE", "PRUNED", "DIVERGED", "CANCELLED"}
    assert len({t.user_attrs["worker"] for t in finished}) == 3
    _no_mlflow_run_left_running(tracking, "pg3")


@pytest.mark.long
@pytest.mark.parametrize(("sig", "code", "why"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_marks_the_trial_ends_its_run_and_the_study_resumes(tmp_path, tiny_train, sig, code, why):
    # every trial must still be running when the signal comes: nothing stops it early
    sweep = _sweep(tmp_path, tiny_train, n_trials=2, epochs=20, name="intr", head="pruner: {no_learning_epochs: 0}\n")
    storage, tracking = f"sqlite:///{tmp_path / 'o.db'}", f"sqlite:///{tmp_path / 'm.db'}"
    args = [sys.executable, "-m", "studyrunner", "run", str(sweep), "--storage", storage, "--tracking-uri", tracking]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            running = optuna.load_study(study_name="intr", storage=storage).get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:
            continue
        if running and len(running[0].intermediate_values) >= 2:
            break
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code and "run again to resume" in " ".join(out.split())
    assert "Traceback" not in out
    trial = optuna.load_study(study_name="intr", storage=storage).trials[-1]
    assert trial.state == optuna.trial.TrialState.FAIL and why in trial.user_attrs["fail_reason"]
    assert not optuna.load_study(study_name="intr", storage=storage).get_trials(states=(optuna.trial.TrialState.RUNNING,))
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("intr").experiment_id])
    statuses = {r.data.tags.get("studyrunner.role"): r.info.status for r in runs}
    assert statuses == {"parent": "KILLED", "trial": "KILLED"}
    again = _run(["run", str(sweep), "--storage", storage, "--tracking-uri", tracking, "--n-trials", "1"], cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    study = optuna.load_study(study_name="intr", storage=storage)
    assert [trial_state(t) for t in study.trials] == ["INTERRUPTED", "COMPLETE"]  # an interrupted trial is not a failure
    first, retry = study.trials  # re-queued with its parameters, continued from its saved epochs: one history
    assert retry.params == first.params and retry.user_attrs["origin"] == first.number
    assert sorted(retry.intermediate_values) == list(range(1, 21))

"""The artifact store is the source of truth: workers in separate folders that share nothing but a
real ``mlflow server --serve-artifacts`` and a real PostgreSQL; a SIGKILLed worker's trial resumes on
the other worker from the uploaded state; an empty third folder reports, exports, trains and predicts.
And the servers restart mid-study without costing a result."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from studyrunner.report.results import trial_history
from tests.conftest import make_folder
from tests.servers import MlflowServer, Postgres

FAST_HEARTBEAT = {"STUDYRUNNER_HEARTBEAT_S": "1", "STUDYRUNNER_GRACE_S": "4", "STUDYRUNNER_SYSTEM_METRICS_S": "0"}
SPACE = "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n  seed: {low: 0, high: 1000}\n"


@pytest.fixture
def artifact_server(tmp_path):
    """A real ``mlflow server --serve-artifacts`` on loopback, stopped whatever the test's end."""
    with MlflowServer(tmp_path / "server") as server:
        yield server


def _machine(root: Path) -> Path:
    """A worker's own folder: its own copy of the images (relative data.path) and its own caches."""
    make_folder(root / "data", classes=4, per_class=48, split="train")
    make_folder(root / "data", classes=4, per_class=6, split="val")
    return root


def _sweep(root: Path, name: str, n_trials: int, epochs: int) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(
        f"study: {name}\nbudget: {{n_trials: {n_trials}}}\npruner: {{name: none, no_learning_epochs: 0}}\n"
        "train:\n  data: {dataset: folder, path: data, image_size: 20, cache_dir: cache}\n"
        f"  epochs: {epochs}\n  batch_size: 16\n  precision: fp32\n  optim: {{name: adam, lr: 0.003}}\n" + SPACE
    )
    return path


def _cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **FAST_HEARTBEAT}
    return subprocess.run(
        [sys.executable, "-m", "studyrunner", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "val_acc"))


@pytest.mark.long
@pytest.mark.postgres
def test_killed_worker_resumes_elsewhere_from_the_artifact_store(tmp_path, pg_url, artifact_server):
    server = artifact_server
    a, b, c = (_machine(tmp_path / n) for n in ("a", "b", "c"))
    stores = ["--storage", pg_url, "--tracking-uri", server.url]
    epochs = 12
    args = [sys.executable, "-m", "studyrunner", "run", str(_sweep(a, "art", 2, epochs)), *stores]
    victim = subprocess.Popen(
        args, cwd=a, env={**os.environ, **FAST_HEARTBEAT}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    killed = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and killed is None:
        time.sleep(0.3)
        try:
            running = optuna.load_study(study_name="art", storage=pg_url).get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:
            continue
        if running and len(running[0].intermediate_values) >= 4:
            time.sleep(0.3)  # the uploads of those epochs' state leave the outbox
            os.kill(victim.pid, signal.SIGKILL)
            killed = running[0]
    victim.wait()
    assert killed is not None, "worker A never got mid-trial"
    shutil.rmtree(a)  # nothing of A's is left but what reached the servers

    res = _cli(["run", str(_sweep(b, "art", 2, epochs)), *stores], cwd=b)
    assert res.returncode == 0, res.stdout + res.stderr

    study = optuna.load_study(study_name="art", storage=pg_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    retry = next(t for t in done if t.params == killed.params)
    resumed = retry.user_attrs["resumed_from_epoch"]
    assert 2 <= resumed < epochs  # continued A's saved state, not from the start
    client = MlflowClient(server.url)
    run = client.get_run(retry.user_attrs["mlflow_run_id"])
    assert run.data.tags["resumed_from_epoch"] == str(resumed)
    assert _steps(client, run.info.run_id) == list(range(1, epochs + 1))  # one continuous history
    names = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert {"best.pt", "last.pt", "history.json"} <= names
    dead = study.trials[killed.number]  # failed by B's stale-trial check, re-queued with its parameters
    assert dead.state == optuna.trial.TrialState.FAIL
    assert [t.number for t in study.trials if t.system_attrs.get("failed_trial") == killed.number] == [retry.number]
    exp = client.get_experiment_by_name("art").experiment_id
    runs = client.search_runs([exp])
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    dead_run = client.get_run(dead.user_attrs["mlflow_run_id"])  # ended by B: KILLED, with the reason
    assert dead_run.info.status == "KILLED" and dead_run.data.tags["state"] == "FAIL"
    assert "heartbeats" in dead_run.data.tags["reason"]
    assert len([r for r in runs if r.data.tags.get("studyrunner.role") == "parent"]) == 1

    # a third, empty folder that reaches the two servers: B's files are gone too
    shutil.rmtree(b)
    rep = _cli(["report", "art", "--storage", pg_url, "--out", "rep"], cwd=c)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert (c / "rep" / "README.md").is_file() and (c / "rep" / "art_curves.png").is_file()
    for t in study.trials:  # every trial's curve, the killed attempt's too, comes from the tracking server
        assert len(trial_history(t, server.url)) == (epochs if t in done else len(t.intermediate_values))
    exp_out = _cli(["export", "art", "--best", "--storage", pg_url, "--out", "best.yaml"], cwd=c)
    assert exp_out.returncode == 0, exp_out.stdout + exp_out.stderr
    train = _cli(["train", "best.yaml", "--data-dir", "data", "--set", "epochs=2", "--json", "t.json"], cwd=c)
    assert train.returncode == 0, train.stdout + train.stderr
    pred = _cli(["predict", "study:art", "data/val", "--storage", pg_url, "--out", "p.csv"], cwd=c)
    assert pred.returncode == 0, pred.stdout + pred.stderr
    rows = list(csv.DictReader((c / "p.csv").open()))
    assert len(rows) == 4 * 6 and {r["predicted"] for r in rows} <= {"c0", "c1", "c2", "c3"}


@pytest.mark.long
@pytest.mark.postgres
def test_tracking_server_and_postgres_restart_mid_study_cost_no_result(tmp_path):
    pg = Postgres()
    server = MlflowServer(tmp_path / "server")
    try:
        url = pg.database()
        root = _machine(tmp_path / "w")
        n_trials, epochs = 2, 8
        args = [sys.executable, "-m", "studyrunner", "run", str(_sweep(root, "rs", n_trials, epochs))]
        args += ["--storage", url, "--tracking-uri", server.url]
        env = {**os.environ, **FAST_HEARTBEAT, "STUDYRUNNER_HEARTBEAT_S": "2", "STUDYRUNNER_GRACE_S": "60"}
        proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.extend(proc.stdout or []), daemon=True)
        reader.start()

        def trials_with(epochs_seen: int) -> int:
            try:
                study = optuna.load_study(study_name="rs", storage=url)
            except Exception:
                return 0
            return sum(len(t.intermediate_values) >= epochs_seen for t in study.trials)

        _wait(lambda: trials_with(3) >= 1, proc, out)
        server.restart(down_s=2.0)  # mid-trial: metrics and uploads wait, then go through
        _wait(lambda: trials_with(3) >= 2, proc, out)  # the second trial, mid-way
        pg.restart(down_s=2.0)  # mid-trial: every pooled connection is cut
        assert proc.wait(timeout=300) == 0, "".join(out)
        reader.join(timeout=5)

        study = optuna.load_study(study_name="rs", storage=url)
        states = [t.state for t in study.trials]
        assert states.count(optuna.trial.TrialState.COMPLETE) == n_trials, "".join(out)
        assert optuna.trial.TrialState.FAIL not in states and optuna.trial.TrialState.RUNNING not in states
        client = MlflowClient(server.url)
        runs = client.search_runs([client.get_experiment_by_name("rs").experiment_id])
        trials = [r for r in runs if r.data.tags.get("studyrunner.role") == "trial"]
        assert len(trials) == n_trials and {r.info.status for r in runs} == {"FINISHED"}
        for r in trials:
            assert _steps(client, r.info.run_id) == list(range(1, epochs + 1))
    finally:
        server.stop()
        pg.close()


def _wait(ready, proc: subprocess.Popen[str], out: list[str], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        assert proc.poll() is None, "the study ended before the restart:\n" + "".join(out)
        time.sleep(0.2)
    raise AssertionError("the study never got there:\n" + "".join(out))

"""Trials resume where they stopped: the run's full state is saved every epoch, and a retried
trial (after an exception, Ctrl-C, SIGTERM or a SIGKILLed worker) continues from its last epoch
with the same result an uninterrupted run of the same seed gets, and one continuous history."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import optuna
import pytest
from mlflow.tracking import MlflowClient

from studyrunner.config import apply_overrides
from studyrunner.engine.checkpoint import state_path
from studyrunner.engine.fit import fit
from studyrunner.report.results import trial_history
from studyrunner.states import TrialState, trial_state
from tests.conftest import write_sweep


class Stop(Exception):
    pass


def _interrupt_after(epoch: int):
    def on_epoch(record):
        if record.epoch == epoch:
            raise Stop()

    return on_epoch


@pytest.mark.parametrize("sched", ["none", "onecycle"])
def test_a_resumed_fit_matches_the_uninterrupted_one(tmp_path, tiny_splits, tiny_config, sched):
    cfg = apply_overrides(tiny_config, {"model.dropout": [0.2, 0.2, 0.2, 0.2], "augment.flip": True, "sched.name": sched})
    whole = fit(replace(cfg, out_dir=str(tmp_path / "whole")), tiny_splits)
    cut = replace(cfg, out_dir=str(tmp_path / "cut"))
    with pytest.raises(Stop):
        fit(cut, tiny_splits, _interrupt_after(2))
    assert state_path(cut).is_file()
    seen = []
    resumed = fit(cut, tiny_splits, lambda r: seen.append(r.epoch), resume=True)
    assert seen == [1, 2, 3, 4]  # the restored epochs are replayed first, in order
    assert [asdict(r) | {"epoch_seconds": 0, "images_per_s": 0} for r in resumed.history] == [
        asdict(r) | {"epoch_seconds": 0, "images_per_s": 0} for r in whole.history
    ]
    assert resumed.test_acc == whole.test_acc and resumed.best_epoch == whole.best_epoch
    assert any("resumed after epoch 2" in n for n in resumed.notes)
    assert whole.history[-1].val_acc >= 0.5 and whole.history[-1].train_loss < whole.history[0].train_loss - 0.2  # it learned


def test_a_state_of_another_configuration_is_not_resumed(tmp_path, tiny_splits, tiny_config):
    cfg = replace(tiny_config, out_dir=str(tmp_path / "run"))
    with pytest.raises(Stop):
        fit(cfg, tiny_splits, _interrupt_after(2))
    other = apply_overrides(cfg, {"optim.lr": 1e-3})
    seen = []
    fit(other, tiny_splits, lambda r: seen.append(r.epoch), resume=True)
    assert seen == [1, 2, 3, 4]
    assert state_path(replace(cfg, state_every=0)) is None  # state_every 0: nothing saved, nothing resumed


@pytest.mark.long
def test_a_sigkilled_trial_continues_from_its_last_epoch(tmp_path, tiny_train):
    """SIGKILL mid-trial; the next run fails the stale trial (heartbeats), re-queues its parameters and
    continues from the saved epoch: the same values as an uninterrupted run of that seed, and the
    retry's MLflow run holds one continuous history."""
    body = tiny_train.replace("epochs: 3", "epochs: 8") + "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
    sweep = write_sweep(tmp_path, f"study: k\nbudget: {{n_trials: 1}}\nsampler: {{name: random, seed: 1}}\n{body}")
    env = {**os.environ, "STUDYRUNNER_HEARTBEAT_S": "1", "STUDYRUNNER_GRACE_S": "2"}

    def command(folder):
        return [
            sys.executable,
            "-m",
            "studyrunner",
            "run",
            str(sweep),
            "--storage",
            f"sqlite:///{folder / 'o.db'}",
            "--tracking-uri",
            f"sqlite:///{folder / 'm.db'}",
        ]

    (tmp_path / "whole").mkdir()
    subprocess.run(command(tmp_path / "whole"), cwd=tmp_path / "whole", env=env, check=True, capture_output=True, timeout=300)
    reference = optuna.load_study(study_name="k", storage=f"sqlite:///{tmp_path / 'whole' / 'o.db'}").trials[0]

    folder = tmp_path / "killed"
    folder.mkdir()
    proc = subprocess.Popen(command(folder), cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = f"sqlite:///{folder / 'o.db'}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            running = optuna.load_study(study_name="k", storage=storage).get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except (KeyError, Exception):
            continue
        if running and len(running[0].intermediate_values) >= 3:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(3)  # longer than the grace period: the trial's heartbeat is stale
    again = subprocess.run(command(folder), cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    study = optuna.load_study(study_name="k", storage=storage)
    killed, retry = study.trials
    assert killed.state == optuna.trial.TrialState.FAIL and trial_state(retry) == TrialState.COMPLETE
    assert retry.params == killed.params == reference.params and retry.user_attrs["origin"] == killed.number
    assert retry.value == pytest.approx(reference.value, abs=1e-6)
    assert [h["val_acc"] for h in trial_history(retry)] == pytest.approx(
        [h["val_acc"] for h in trial_history(reference)], abs=1e-6
    )
    client = MlflowClient(f"sqlite:///{folder / 'm.db'}")
    steps = [m.step for m in client.get_metric_history(retry.user_attrs["mlflow_run_id"], "val_acc")]
    assert steps == list(range(1, 9))  # one continuous history in the retry's run
    assert not list((folder / "runs" / "checkpoints" / "k" / f"trial-{killed.number}").glob("state-*.pt"))  # done: removed

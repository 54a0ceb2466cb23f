"""A trial whose files never reach the artifact store ends FAIL with that reason, and loses nothing:
its retry resumes from the files kept locally and logs them again (a real SQLite MLflow store whose
artifact folder for the trial's files is made unusable mid-trial)."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow.tracking import MlflowClient

from studyrunner.search.driver import RunOptions, run_study
from studyrunner.search.objective import StudyEvents
from studyrunner.states import TrialRecord, trial_state
from tests.conftest import sweep_spec


class BreakUploads(StudyEvents):
    """After the first trial's first epoch, the run's ``checkpoint/`` artifact folder becomes a file."""

    def __init__(self, artifacts: Path) -> None:
        self.artifacts, self.done = artifacts, False

    def epoch_done(self, number: int, record, epochs: int) -> None:
        if self.done or number != 0:
            return
        for run in self.artifacts.glob("**/artifacts"):  # the trial's run (and the parent's, if it has a folder yet)
            target = run / "checkpoint"
            if target.is_dir():
                shutil.rmtree(target)
            target.write_text("not a folder")
            self.done = True


def test_an_upload_that_never_arrives_fails_the_trial_and_its_retry_keeps_the_result(tmp_path, tiny_train, monkeypatch):
    monkeypatch.setenv("STUDYRUNNER_UPLOAD_RETRY_S", "1")
    monkeypatch.setenv("STUDYRUNNER_SYSTEM_METRICS_S", "0")
    monkeypatch.chdir(tmp_path)
    spec = sweep_spec(tmp_path, tiny_train.replace("epochs: 3", "epochs: 4"), head="budget: {n_trials: 1}\n", name="up")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    events = BreakUploads(tmp_path / "mlartifacts")
    out = run_study(spec, RunOptions(storage=f"sqlite:///{tmp_path / 'optuna.db'}", tracking_uri=tracking), events)
    assert events.done
    first, retry = out.study.trials
    assert trial_state(first) == "FAIL"
    assert "did not take the trial's metrics and files" in TrialRecord.of(first.user_attrs).fail_reason
    assert trial_state(retry) == "COMPLETE" and retry.params == first.params
    record = TrialRecord.of(retry.user_attrs)
    assert record.resumed_from_epoch == 4  # every epoch was kept locally: nothing trained again
    assert record.epochs == 4 and record.final_val_acc is not None and record.final_val_acc > 0.25  # it learned
    client = MlflowClient(tracking)
    names = {Path(f.path).name for f in client.list_artifacts(record.mlflow_run_id, "checkpoint")}
    assert {"best.pt", "last.pt", "history.json"} <= names
    assert sorted(m.step for m in client.get_metric_history(record.mlflow_run_id, "val_acc")) == [1, 2, 3, 4]


class CtrlC(StudyEvents):
    """Ctrl-C in the first batch after trial ``number`` finished ``epoch`` (as a real one lands: mid-epoch)."""

    def __init__(self, number: int, epoch: int) -> None:
        self.number, self.epoch, self.armed = number, epoch, False

    def epoch_done(self, number: int, record, epochs: int) -> None:
        self.armed = self.armed or (number == self.number and record.epoch == self.epoch)

    def batch_done(self, done: int, total: int) -> None:
        if self.armed:
            raise KeyboardInterrupt


def test_a_retry_interrupted_in_its_turn_records_where_it_resumed_and_its_epochs_count_once(tmp_path, tiny_train, monkeypatch):
    import optuna
    import pytest

    from studyrunner.search.best import epochs_spent

    monkeypatch.chdir(tmp_path)
    spec = sweep_spec(tmp_path, tiny_train.replace("epochs: 3", "epochs: 6"), head="budget: {n_trials: 1}\n", name="cc")
    opts = RunOptions(storage=f"sqlite:///{tmp_path / 'optuna.db'}", tracking_uri="none")
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, opts, CtrlC(0, 2))  # the first attempt stops after epoch 2
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, opts, CtrlC(1, 4))  # its retry continues from epoch 2 and stops after epoch 4
    study = optuna.load_study(study_name="cc", storage=opts.storage)
    first, retry = study.trials
    assert TrialRecord.of(retry.user_attrs).resumed_from_epoch == 2 and TrialRecord.of(retry.user_attrs).origin == 0
    assert epochs_spent(study.get_trials(deepcopy=False), 0, 1) == 4  # 2 + 2, not 2 + 4
    done = run_study(spec, opts).study
    assert trial_state(done.trials[-1]) == "COMPLETE" and epochs_spent(done.get_trials(deepcopy=False), 0, 1) == 6

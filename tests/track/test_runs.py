"""MLflow tracking on a real SQLite store: the parent run, nested trial runs, per-epoch metrics,
final metrics and artifacts rendered from a fit result, and the status each state ends with."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from studyrunner.config import TrainConfig
from studyrunner.engine.fit import EpochRecord, FitResult
from studyrunner.states import TrialState
from studyrunner.track.runs import Tracker, metric_key


def _records(n: int) -> list[EpochRecord]:
    return [EpochRecord(e, 2.0 / e, 0.3 * e, 2.1 / e, 0.25 * e, 0.01, 1.0, 500.0) for e in range(1, n + 1)]


def _result() -> FitResult:
    return FitResult(
        history=_records(3), best_epoch=3, best_val_acc=0.75, test_acc=0.7, test_loss=0.9,
        classes=["cat", "dog"], val_confusion=[[3, 1], [0, 4]],
    )  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite tracking store for the module: MLflow's schema migrations run once."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracker(store, request) -> Tracker:
    return Tracker(store, f"study-{request.node.name}", {"sampler": "tpe"})


def test_parent_run_is_found_again_on_resume(tmp_path, tracker):
    again = Tracker(tracker.uri, tracker.study)
    assert again.parent_id == tracker.parent_id and again.experiment_id == tracker.experiment_id
    parent = tracker.client.get_run(tracker.parent_id)
    assert parent.data.tags["studyrunner.role"] == "parent" and parent.data.tags["sampler"] == "tpe"


def test_a_complete_trial_gets_params_epochs_metrics_and_artifacts(tmp_path, tracker):
    run_id = tracker.start_trial(0, TrainConfig(out_dir="/x/trial-0"), {"optim.lr": 0.01}, {"seed": "0"}, ["cat", "dog"])
    result = _result()
    for record in result.history:
        tracker.log_epoch(run_id, record)
    tracker.end_trial(run_id, TrialState.COMPLETE, "", [0.75, 0.73], result, result.history)
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["state"] == "COMPLETE"
    assert run.data.tags["mlflow.parentRunId"] == tracker.parent_id and run.data.tags["sampled.optim.lr"] == "0.01"
    assert run.data.params["optim.lr"] == "0.01" and run.data.params["model.name"] == "cifar_alexnet"
    assert "out_dir" not in run.data.params and run.data.tags["out_dir"] == "/x/trial-0"  # a path is no parameter to compare
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on training runs
    assert run.data.metrics["value"] == pytest.approx(0.74) and run.data.metrics["value_sd"] > 0
    assert run.data.metrics["val_acc_dog"] == 1.0 and run.data.metrics["epochs_run"] == 3
    history = tracker.client.get_metric_history(run_id, "val_acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    names = {a.path for a in tracker.client.list_artifacts(run_id)}
    assert {"config.yaml", "classes.json", "learning_curves.png", "confusion_matrix.png", "confusion_matrix.json"} <= names
    matrix = json.loads(Path(tracker.client.download_artifacts(run_id, "confusion_matrix.json", str(tmp_path))).read_text())
    assert matrix == {"classes": ["cat", "dog"], "matrix": [[3, 1], [0, 4]]}


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (TrialState.PRUNED, "KILLED"),
        (TrialState.DIVERGED, "FAILED"),
        (TrialState.FAIL, "FAILED"),
        (TrialState.INTERRUPTED, "KILLED"),
    ],
)
def test_a_trial_that_did_not_complete_ends_with_its_states_status(tracker, state, status):
    run_id = tracker.start_trial(1, TrainConfig(), {}, {})
    records = _records(1)
    tracker.log_epoch(run_id, records[0])
    tracker.end_trial(run_id, state, "why it stopped", [], None, records)
    run = tracker.client.get_run(run_id)
    assert run.info.status == status and run.data.tags["state"] == state.value and run.data.tags["reason"] == "why it stopped"
    assert "value" not in run.data.metrics and run.data.metrics["epochs_run"] == 1


def test_a_dead_workers_run_is_reaped_once(tracker):
    run_id = tracker.start_trial(2, TrainConfig(), {}, {})
    tracker.reap(run_id, "worker h:1 stopped sending heartbeats")
    run = tracker.client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["state"] == "FAIL"
    tracker.reap(run_id, "again")  # already ended: left as it is
    assert tracker.client.get_run(run_id).data.tags["reason"] == "worker h:1 stopped sending heartbeats"


def test_a_trial_whose_run_id_was_never_recorded_is_reaped_by_its_tags(tracker):
    """A worker killed between creating the run and recording its id leaves a run only its tags name."""
    orphan = tracker.start_trial(5, TrainConfig(), {}, {})
    other = tracker.start_trial(6, TrainConfig(), {}, {})
    tracker.reap_trial(5, "terminated (SIGTERM)", TrialState.INTERRUPTED)
    run = tracker.client.get_run(orphan)
    assert run.info.status == "KILLED" and run.data.tags["state"] == "INTERRUPTED"
    assert run.data.tags["reason"] == "terminated (SIGTERM)"
    assert tracker.client.get_run(other).info.status == "RUNNING"  # another trial's run is left alone


def test_parent_summary_and_close(tracker):
    tracker.update_parent({"n_complete": 2.0, "best_value": 0.8}, {"optim.lr": 0.01}, {"n_trials_finished": "2"})
    tracker.close("FINISHED")
    parent = MlflowClient(tracker.uri).get_run(tracker.parent_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_value"] == 0.8
    assert parent.data.tags["best.optim.lr"] == "0.01" and parent.data.tags["n_trials_finished"] == "2"


def test_metric_keys_keep_letters_of_any_script():
    assert metric_key("val_acc_猫") == "val_acc_猫" and metric_key("val_acc_cat+dog (x)") == "val_acc_cat_dog _x_"

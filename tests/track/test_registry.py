"""The best model in MLflow's Model Registry: a tracked study registers its best trial as the study's
name with the alias best; models:/NAME@best loads through mlflow.pytorch and predicts what the best
checkpoint predicts; running or registering again adds no version; predict takes the URI."""

import mlflow
import mlflow.pytorch
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from studyrunner.cli.main import app
from studyrunner.engine.checkpoint import load_checkpoint
from studyrunner.engine.data import load_splits
from studyrunner.search.best import best_trial
from studyrunner.search.driver import RunOptions, run_study
from studyrunner.states import TrialRecord
from tests.conftest import sweep_spec


def test_a_tracked_study_registers_its_best_model_once(tmp_path, tiny_train, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracking, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'o.db'}"
    spec = sweep_spec(tmp_path, tiny_train.replace("epochs: 3", "epochs: 2"), head="budget: {n_trials: 2}\n")
    study = run_study(spec, RunOptions(storage=storage, tracking_uri=tracking)).study
    client = MlflowClient(tracking)
    version = client.get_model_version_by_alias("s", "best")
    best = best_trial(study)
    assert best is not None and version.run_id == TrialRecord.of(best.user_attrs).mlflow_run_id and int(version.version) == 1

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)  # for mlflow's own loader; restored after the test
    registered = mlflow.pytorch.load_model("models:/s@best", map_location="cpu").eval()
    checkpoint = load_checkpoint(TrialRecord.of(best.user_attrs).checkpoint)
    meta = mlflow.models.get_model_info("models:/s@best").metadata
    assert meta["classes"] == checkpoint.classes and meta["image_size"] == 20 and meta["mean"] == checkpoint.mean
    images = load_splits(checkpoint.config.data).val.images  # type: ignore[union-attr]
    x = (images.float() / 255 - torch.tensor(checkpoint.mean)[:, None, None]) / torch.tensor(checkpoint.std)[:, None, None]
    with torch.no_grad():
        assert torch.equal(registered(x).argmax(1), checkpoint.model(x).argmax(1))

    run_study(spec, RunOptions(storage=storage, tracking_uri=tracking))  # resumed: nothing to add, registered again
    res = CliRunner().invoke(app, ["register", "s", "--storage", storage, "--tracking-uri", tracking])
    assert res.exit_code == 0 and "already registered as s version 1" in " ".join(res.output.split())
    assert [int(v.version) for v in client.search_model_versions("name = 's'")] == [1]  # no duplicate versions

    out = tmp_path / "p.csv"
    args = ["predict", "models:/s@best", str(tiny_data / "val"), "--out", str(out), "--tracking-uri", tracking]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert len(out.read_text().splitlines()) == 1 + 16 and "accuracy" in res.output

"""`studyrunner predict`: a study's best model on a folder of class folders, the CSV it writes, the
accuracy and confusion matrix it prints, the grid, and its refusals."""

import csv
import os

from typer.testing import CliRunner

from studyrunner.cli.main import app
from studyrunner.search.driver import RunOptions, run_study
from tests.conftest import sweep_spec

runner = CliRunner()


def flat(res) -> str:
    return " ".join(res.output.split())


def test_predict_a_studys_best_model_on_class_folders(tmp_path, tiny_train, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = sweep_spec(tmp_path, tiny_train, head="budget: {n_trials: 2}\n")
    run_study(spec, RunOptions(storage=f"sqlite:///{tmp_path / 'o.db'}", tracking_uri="none"))
    store = ["--storage", f"sqlite:///{tmp_path / 'o.db'}"]
    out, grid = tmp_path / "p" / "preds.csv", tmp_path / "p" / "grid.png"
    res = runner.invoke(app, ["predict", "study:s", str(tiny_data / "test"), "--out", str(out), "--grid", str(grid), *store])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 16 and set(rows[0]) == {"path", "predicted", "probability", "top_k", "true"}
    assert all(r["top_k"].split(";")[0].split(":")[0] == r["predicted"] for r in rows)
    right = sum(r["predicted"] == r["true"] for r in rows)
    assert f"accuracy {100 * right / 16:.2f}% on 16 images in class folders" in flat(res) and "confusion matrix" in flat(res)
    assert grid.stat().st_size > 5000


def test_predict_refuses_what_it_cannot_use(tmp_path):
    before = os.environ.get("MLFLOW_TRACKING_URI")
    res = runner.invoke(app, ["predict", "models:/s@best", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    assert res.exit_code == 1 and "not found in the model registry" in flat(res)
    assert os.environ.get("MLFLOW_TRACKING_URI") == before  # later worker processes must not inherit it
    res = runner.invoke(app, ["predict", str(tmp_path / "none.pt"), str(tmp_path)])
    assert res.exit_code == 1 and "not a readable studyrunner checkpoint" in flat(res)
    res = runner.invoke(app, ["predict", "x.pt", str(tmp_path), "--top-k", "0"])
    assert res.exit_code == 1 and "--top-k 0: must be > 0" in flat(res)

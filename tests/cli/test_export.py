"""`studyrunner export STUDY --best --format onnx|torchscript`: a tiny study's best model written
where it says, with its study and trial inside, and the one-line refusals (a bad --format, a
missing extra)."""

import json
import sys

import pytest
from typer.testing import CliRunner

from studyrunner.cli.main import app
from studyrunner.search.best import best_trial
from studyrunner.search.driver import RunOptions, run_study
from tests.conftest import sweep_spec

runner = CliRunner()


def flat(res) -> str:
    return " ".join(res.output.split())


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_a_studys_best_model_as_onnx_and_torchscript(tmp_path, tiny_train, monkeypatch):
    onnx, ort = pytest.importorskip("onnx"), pytest.importorskip("onnxruntime")
    import numpy as np
    import torch

    monkeypatch.chdir(tmp_path)
    spec = sweep_spec(tmp_path, tiny_train.replace("epochs: 3", "epochs: 2"), head="budget: {n_trials: 1}\n")
    best = best_trial(run_study(spec, RunOptions(storage=f"sqlite:///{tmp_path / 'o.db'}", tracking_uri="none")).study)
    assert best is not None and best.value > 0.5  # it learned (chance is 1/4)
    store = ["--storage", f"sqlite:///{tmp_path / 'o.db'}"]

    res = runner.invoke(app, ["export", "s", "--best", "--format", "onnx", *store])
    assert res.exit_code == 0, res.output
    path = tmp_path / "runs" / "exports" / "s-best.onnx"
    out = flat(res)
    assert out.startswith("wrote runs/exports/s-best.onnx (study s, trial ") and "max |logit difference| from PyTorch" in out
    assert 'load it with onnxruntime.InferenceSession("runs/exports/s-best.onnx")' in out and len(res.output.splitlines()) == 1
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["study"] == "s" and props["trial"] == str(best.number)
    assert json.loads(props["classes"]) == ["c0", "c1", "c2", "c3"] and props["checkpoint"].endswith("best.pt")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"pixels": np.random.default_rng(0).random((3, 3, 20, 20), dtype=np.float32)})
    assert logits.shape == (3, 4)

    res = runner.invoke(app, ["export", "s", "--best", "--format", "torchscript", *store])
    assert res.exit_code == 0, res.output
    assert 'load it with torch.jit.load("runs/exports/s-best.ts.pt")' in flat(res)
    side = json.loads((tmp_path / "runs" / "exports" / "s-best.ts.pt.json").read_text())
    assert side["format"] == "torchscript" and side["trial"] == best.number and side["checked_max_abs_diff"] <= 1e-4
    loaded = torch.jit.load(str(tmp_path / "runs" / "exports" / "s-best.ts.pt"))
    assert tuple(loaded(torch.rand(2, 3, 20, 20)).shape) == (2, 4)


def test_a_bad_format_and_a_missing_extra_are_one_line_each(tmp_path, tiny_train, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["export", "s", "--best", "--format", "tflite"])
    assert res.exit_code == 1 and flat(res) == "error: --format 'tflite': allowed with --best: yaml, onnx, torchscript"
    res = runner.invoke(app, ["export", "s", "--format", "onnx"])
    assert res.exit_code == 1 and flat(res) == "error: --format 'onnx': allowed without --best: csv, parquet"
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the export extra were not installed
    res = runner.invoke(app, ["export", "s", "--best", "--format", "onnx", "--storage", f"sqlite:///{tmp_path / 'none.db'}"])
    expected = (
        "error: --format onnx needs the package onnx, in studyrunner's 'export' extra: "
        'pip install -e ".[export]" in the project folder (or pip install onnx)'
    )
    assert res.exit_code == 1 and res.output.strip() == expected and "Traceback" not in res.output
    assert not (tmp_path / "runs").exists()  # said before any work

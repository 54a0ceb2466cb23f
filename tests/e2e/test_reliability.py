"""Reliability corpus: stores, URLs, paths, values and faults a user meets in their first runs.

Every bad input gets exit code 1, one message naming the file, key, URL or path at fault, no
traceback, and leaves the stores already recorded byte for byte as they were."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from studyrunner.cli.main import app
from tests.conftest import make_folder, write_sweep

runner = CliRunner()


def flat(res) -> str:
    return " ".join(res.output.split())


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """An Optuna storage holding a study and an MLflow store holding an experiment: the recorded
    state every bad invocation must leave untouched."""
    import mlflow
    import optuna

    root = tmp_path_factory.mktemp("stores")
    optuna_db, mlflow_db = root / "optuna.db", root / "mlflow.db"
    study = optuna.create_study(study_name="kept", storage=f"sqlite:///{optuna_db}", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    mlflow.MlflowClient(f"sqlite:///{mlflow_db}").create_experiment("kept")
    foreign = root / "shop.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE customers (id INTEGER)")
    text = root / "notes.db"
    text.write_text("these are my notes, not a database\n")
    return {"optuna": optuna_db, "mlflow": mlflow_db, "foreign": foreign, "text": text, "root": root}


@pytest.fixture
def sweep(tmp_path, tiny_train):
    text = f"study: rel\nbudget: {{n_trials: 1}}\n{tiny_train}space:\n  optim.lr: {{low: 1.0e-3, high: 1.0e-2}}\n"
    return write_sweep(tmp_path, text)


def _unchanged(stores, before):
    return all(_digest(stores[k]) == v for k, v in before.items())


# --------------------------------------------------------------------------- stores and tracking URIs checked up front

STORE_CASES = {  # name: (--storage, --tracking-uri, expected fragment); {root} is the stores' folder
    "unknown scheme": ("foo://host/db", "none", "unknown scheme 'foo'"),
    "not a URL": ("optuna.db", "none", "is not a database URL"),
    "sqlite in a missing directory": ("sqlite:///{root}/nowhere/o.db", "none", "nowhere does not exist"),
    "sqlite path is a directory": ("sqlite:///{root}", "none", "is a directory"),
    "sqlite file is not a database": ("sqlite:///{root}/notes.db", "none", "is not an SQLite database"),
    "optuna storage is the mlflow db": ("sqlite:///{root}/mlflow.db", "none", "is an MLflow database"),
    "tracking store is the optuna db": (None, "sqlite:///{root}/optuna.db", "is an Optuna database"),
    "optuna storage of another app": ("sqlite:///{root}/shop.db", "none", "another application (customers)"),
    "tracking store of another app": (None, "sqlite:///{root}/shop.db", "another application"),
    "tracking sqlite missing dir": (None, "sqlite:///{root}/nowhere/m.db", "does not exist"),
    "tracking not a database": (None, "sqlite:///{root}/notes.db", "is not an SQLite database"),
    "postgres not listening": ("postgresql://user@127.0.0.1:1/db", "none", "no server answers at 127.0.0.1:1"),
    "unknown postgres driver": ("postgresql+nodriver://user@127.0.0.1/db", "none", "knows no driver"),
    "mysql without a driver": ("mysql://user@127.0.0.1/db", "none", "driver is not installed"),
    "tracking server not answering": (None, "http://127.0.0.1:1", "no MLflow server answers"),
    "tracking unknown scheme": (None, "ftp://host/x", "unknown scheme 'ftp'"),
    "tracking file store is a file": (None, "file:{root}/notes.db", "is a file, not a folder"),
    "journal in a missing directory": ("journal:{root}/nowhere/j.log", "none", "does not exist"),
}


@pytest.mark.parametrize("case", list(STORE_CASES))
def test_bad_store_is_refused_before_anything_is_created(stores, sweep, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDYRUNNER_CONNECT_TIMEOUT_S", "2")
    storage, tracking, expected = STORE_CASES[case]
    root = stores["root"]
    before = {k: _digest(stores[k]) for k in ("optuna", "mlflow", "foreign", "text")}
    listing = sorted(p.name for p in root.iterdir())
    args = ["run", str(sweep), "--tracking-uri", tracking.format(root=root)]
    args += ["--storage", storage.format(root=root)] if storage else ["--storage", f"sqlite:///{tmp_path / 'fresh.db'}"]
    res = runner.invoke(app, args)
    out = flat(res)
    assert res.exit_code == 1 and out.startswith("error:") and "Traceback" not in out, out
    assert expected in out, (expected, out)
    assert _unchanged(stores, before) and sorted(p.name for p in root.iterdir()) == listing
    assert not (tmp_path / "fresh.db").exists() and not (tmp_path / "runs" / "checkpoints").exists()


def test_missing_postgres_driver_names_the_extra(monkeypatch):
    from studyrunner.stores import StoreError, check_storage

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the postgres extra were not installed
    with pytest.raises(StoreError, match=r"pip install 'studyrunner\[postgres\]'"):
        check_storage("postgresql://user@127.0.0.1:1/db")


@pytest.mark.parametrize("command", [["ls"], ["show", "kept"], ["export", "kept"], ["report", "kept"]])
def test_reading_commands_refuse_a_storage_that_does_not_exist(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, [*command, "--storage", f"sqlite:///{tmp_path / 'typo.db'}"])
    assert res.exit_code == 1 and "typo.db does not exist" in flat(res), flat(res)
    assert not (tmp_path / "typo.db").exists() and not (tmp_path / "reports").exists()


# --------------------------------------------------------------------------- output paths checked before any work


def _out_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir").mkdir()
    return {
        "train --json is a directory": (["train", "--json", str(tmp_path / "a_dir")], "is a directory"),
        "train --json under a file": (["train", "--json", str(tmp_path / "a_file" / "r.json")], "is a file, not a folder"),
        "train --out is a file": (["train", "--out", str(tmp_path / "a_file")], "is a file, not a folder"),
        "export --out is a directory": (["export", "kept", "--out", str(tmp_path / "a_dir")], "is a directory"),
        "export --out in a missing dir": (["export", "kept", "--out", str(tmp_path / "no" / "t.csv")], "does not exist"),
        "report --out under a file": (["report", "kept", "--out", str(tmp_path / "a_file" / "r")], "is a file"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "train --json is a directory",
        "train --json under a file",
        "train --out is a file",
        "export --out is a directory",
        "export --out in a missing dir",
        "report --out under a file",
    ],
)
def test_output_path_is_checked_before_any_work(stores, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STUDYRUNNER_DATA_DIR", raising=False)  # training would fail later, on data: it must not get there
    args, expected = _out_cases(tmp_path)[case]
    if args[0] in ("export", "report"):
        args += ["--storage", f"sqlite:///{stores['optuna']}"]
    before = _digest(stores["optuna"])
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and expected in flat(res) and "no data directory" not in flat(res), flat(res)
    assert _digest(stores["optuna"]) == before


# --------------------------------------------------------------------------- values that used to reach torch, PIL, Optuna, YAML

SPACE = "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2}\n"
VALUE_CASES = {  # name: (sweep text without train:, expected fragment)
    "nan in a range": ("study: v\nspace:\n  optim.lr: {low: .nan, high: 0.1}\n", "finite number"),
    "infinite high": ("study: v\nspace:\n  optim.lr: {low: 0.001, high: .inf}\n", "finite number"),
    "nan learning rate in train": ("study: v\ntrain: {optim.lr: .nan}\n" + SPACE, "optim.lr"),
    "infinite gamma": ("study: v\ntrain: {sched.gamma: .inf}\n" + SPACE, "sched.gamma"),
    "boolean n_trials": ("study: v\nbudget: {n_trials: yes}\n" + SPACE, "got a boolean"),
    "boolean repeats": ("study: v\nrepeats: true\n" + SPACE, "got a boolean"),
    "boolean timeout": ("study: v\nbudget: {timeout: on}\n" + SPACE, "got a boolean"),
    "boolean range bound": ("study: v\nspace:\n  optim.lr: {low: false, high: 0.1}\n", "got a boolean"),
    "boolean epochs": ("study: v\ntrain: {epochs: yes}\n" + SPACE, "epochs"),
    "negative sampler seed": ("study: v\nsampler: {seed: -1}\n" + SPACE, "sampler.seed"),
    "sampler seed over 2**32": ("study: v\nsampler: {seed: 99999999999}\n" + SPACE, "sampler.seed"),
    "training seed over 2**32": ("study: v\ntrain: {seed: 5000000000}\n" + SPACE, "seed must be in [0, 2**32)"),
    "negative split seed": ("study: v\ntrain: {data.split_seed: -4}\n" + SPACE, "data.split_seed"),
    "device that is no device": ("study: v\ntrain: {device: tpu}\n" + SPACE, "device must be auto, cpu, cuda"),
    "beta1 of one": ("study: v\ntrain: {optim.beta1: 1.0}\n" + SPACE, "optim.beta1 must be in [0, 1)"),
    "negative beta2": ("study: v\ntrain: {optim.beta2: -0.1}\n" + SPACE, "optim.beta2"),
    "zero gamma": ("study: v\ntrain: {sched.gamma: 0}\n" + SPACE, "sched.gamma must be > 0"),
    "milestone zero": ("study: v\ntrain: {sched.milestones: [0, 10]}\n" + SPACE, "sched.milestones must be epochs >= 1"),
    "negative threads": ("study: v\ntrain: {threads: -2}\n" + SPACE, "threads must be >= 0"),
    "negative cooldown": ("study: v\ntrain: {sched.cooldown: -1}\n" + SPACE, "sched.cooldown"),
    "momentum range beyond 1": ("study: v\nspace:\n  optim.momentum: {low: 0.5, high: 1.5}\n", "optim.momentum"),
    "duplicate top-level key": ("study: v\nstudy: w\n" + SPACE, "'study' is given twice (first on line 1)"),
    "duplicate nested key": (
        "study: v\nspace:\n  optim.lr: {low: 0.001, high: 0.01}\n  optim.lr: {choices: [0.1]}\n",
        "given twice",
    ),
    "dotted and nested key": ("study: v\ntrain:\n  optim.lr: 0.1\n  optim: {lr: 0.2}\n" + SPACE, "optim.lr is given twice"),
    "recursive alias": ("study: v\nnotes: &a [*a]\n" + SPACE, "recursive YAML alias"),
    "alias bomb": (
        "study: v\na: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n" + SPACE,
        "more than 100000 YAML nodes",
    ),
    "grid too large": (
        "study: v\nsampler: {name: grid}\nspace:\n  optim.lr: {low: 1.0e-9, high: 1.0, step: 1.0e-9}\n",
        "more than 100000",
    ),
    "grid smaller than n_trials": (
        "study: v\nsampler: {name: grid}\nbudget: {n_trials: 5}\nspace:\n  optim.name: {choices: [sgd, adam]}\n",
        "exceeds the grid's 2 points",
    ),
    "study name too long": ("study: " + "x" * 101 + "\n" + SPACE, "at most 100 characters"),
    "test metric without a test set": (
        "study: v\nobjective: {metric: test_acc}\ntrain: {data.val_from: test}\n" + SPACE,
        "needs a test set",
    ),
}


@pytest.mark.parametrize("case", list(VALUE_CASES))
def test_bad_value_refused_by_validate_and_run(stores, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    text, expected = VALUE_CASES[case]
    path = write_sweep(tmp_path, text, "bad.yaml")
    before = {k: _digest(stores[k]) for k in ("optuna", "mlflow")}
    for command in (
        ["validate", str(path)],
        ["run", str(path), "--storage", f"sqlite:///{stores['optuna']}", "--tracking-uri", f"sqlite:///{stores['mlflow']}"],
    ):
        res = runner.invoke(app, command)
        out = flat(res)
        assert res.exit_code == 1 and out.startswith("error:") and "Traceback" not in out, (command[0], out)
        assert "bad.yaml" in out.replace(" ", "") and " ".join(expected.split()) in out, (command[0], expected, out)
    assert _unchanged(stores, before) and not (tmp_path / "runs").exists()


FILE_CASES = {
    "not UTF-8": (b"study: caf\xe9\n", "not UTF-8 text (byte 0xe9"),
    "binary file": (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "not a text file"),
    "latin-1 on line 3": (b"study: v\nspace:\n  # r\xe9sum\xe9\n", "line 3: not UTF-8"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_files_that_are_not_utf8_text(tmp_path, case):
    raw, expected = FILE_CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_bytes(raw)
    for command in (["validate", str(path)], ["run", str(path), "--tracking-uri", "none"]):
        res = runner.invoke(app, command)
        assert res.exit_code == 1 and expected in flat(res) and "Traceback" not in flat(res), flat(res)


def test_a_directory_given_as_the_sweep(tmp_path):
    res = runner.invoke(app, ["validate", str(tmp_path)])
    assert res.exit_code == 1 and "is a directory; expected a YAML file" in flat(res)


def test_a_device_this_machine_lacks(tmp_path):
    import torch

    missing = f"cuda:{torch.cuda.device_count() + 3}"
    path = write_sweep(tmp_path, f"study: v\ntrain: {{device: '{missing}'}}\n{SPACE}", "dev.yaml")
    res = runner.invoke(app, ["validate", str(path), "--data-dir", str(tmp_path)])
    assert res.exit_code == 1 and f"device: '{missing}' is not available" in flat(res), flat(res)


# --------------------------------------------------------------------------- the command line's own numbers


@pytest.mark.parametrize(
    ("option", "value"), [("--n-trials", "0"), ("--n-trials", "-3"), ("--timeout", "0"), ("--timeout", "-60")]
)
def test_non_positive_budgets_on_the_command_line(stores, sweep, tmp_path, monkeypatch, option, value):
    monkeypatch.chdir(tmp_path)
    before = _digest(stores["optuna"])
    res = runner.invoke(app, ["run", str(sweep), option, value, "--storage", f"sqlite:///{stores['optuna']}"])
    assert res.exit_code == 1 and f"{option} {float(value):g}: must be > 0" in flat(res), flat(res)
    assert _digest(stores["optuna"]) == before


def test_grid_budget_given_on_the_command_line_is_checked(tmp_path, tiny_train, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_sweep(
        tmp_path,
        f"study: g\nsampler: {{name: grid}}\nbudget: {{n_trials: 2}}\n{tiny_train}"
        "space:\n  optim.name: {choices: [sgd, adam]}\n",
    )
    res = runner.invoke(app, ["run", str(path), "--n-trials", "9", "--tracking-uri", "none"])
    assert res.exit_code == 1 and "n_trials 9 exceeds the grid's 2 points" in flat(res)
    assert not (tmp_path / "runs" / "optuna.db").exists()


# --------------------------------------------------------------------------- narrative cross-checks

STORY = """\
study: st
repeats: 2
scales: {reduced: {epochs: 2}}
steps:
  - {name: a, title: A}
  - {name: b, title: B, train: {model: {batchnorm: true}}}
claims:
  - {id: c1, text: B is better, a: b, b: a, metric: val_acc@1}
"""
NARRATIVE_CASES = {
    "no steps": (STORY.split("steps:")[0] + "claims: []\n", "steps: required key is missing"),
    "threshold in percent": (
        STORY.replace(
            "{id: c1, text: B is better, a: b, b: a, metric: val_acc@1}",
            "{id: c1, text: x, kind: above, a: b, metric: best_val_acc, threshold: 85}",
        ),
        "threshold 85 is not on the metric's scale",
    ),
    "margin in points": (STORY.replace("metric: val_acc@1}", "metric: val_acc@1, margin: 3}"), "margin 3 is not on"),
    "epoch beyond the scale": (STORY.replace("val_acc@1", "val_acc@9"), "refers to epoch 9, but step b runs 2 epochs"),
    "step name too long": (STORY.replace("name: a,", "name: " + "a" * 31 + ","), "at most 30 characters"),
}


@pytest.mark.parametrize("case", list(NARRATIVE_CASES))
def test_narrative_cross_checks(tmp_path, case):
    text, expected = NARRATIVE_CASES[case]
    path = write_sweep(tmp_path, text, "story.yaml")
    for command in (["validate", str(path)], ["run", str(path), "--tracking-uri", "none"]):
        res = runner.invoke(app, command)
        assert res.exit_code == 1 and expected in flat(res) and "Traceback" not in flat(res), (command[0], flat(res))


# --------------------------------------------------------------------------- data cross-checks


def _cfg(root: Path, tmp_path: Path, **kw):
    from studyrunner.config import DataConfig

    return DataConfig(dataset="folder", path=str(root), image_size=20, cache_dir=str(tmp_path / "cache"), **kw)


def test_a_single_class_folder_is_refused(tmp_path):
    from studyrunner.engine.data import load_splits
    from studyrunner.engine.decode import DataError

    root = make_folder(tmp_path / "one", classes=1, per_class=10, split=None)
    with pytest.raises(DataError, match="one class folder .*at least two classes"):
        load_splits(_cfg(root, tmp_path))


def test_selecting_a_single_class_is_refused(tmp_path):
    from studyrunner.engine.data import load_splits
    from studyrunner.engine.decode import DataError

    root = make_folder(tmp_path / "three", classes=3, per_class=10, split=None)
    with pytest.raises(DataError, match=r"data.classes \['c1'\]: a classifier needs at least two classes"):
        load_splits(_cfg(root, tmp_path, classes=("c1",)))


def test_class_selection_is_applied_before_the_splits_are_compared(tmp_path):
    """val/ holds only the selected classes: a valid selection, accepted."""
    import shutil

    from studyrunner.engine.data import load_splits

    root = make_folder(tmp_path / "d", classes=4, per_class=6, split="train")
    make_folder(root, classes=4, per_class=2, split="val")
    for dropped in ("c0", "c2"):
        shutil.rmtree(root / "val" / dropped)
    splits = load_splits(_cfg(root, tmp_path, classes=("c1", "c3")))
    assert splits.classes == ["c1", "c3"] and len(splits.val) == 4 and set(splits.train.labels.tolist()) == {0, 1}


def test_a_val_split_that_rounds_to_zero_images(tmp_path):
    from studyrunner.engine.data import load_splits
    from studyrunner.engine.decode import DataError

    root = make_folder(tmp_path / "d", classes=2, per_class=4, split=None)
    with pytest.raises(DataError, match="data.val_fraction 0.05 of 8 training images rounds to 0"):
        load_splits(_cfg(root, tmp_path, val_fraction=0.05))


def test_an_image_over_the_decompression_bomb_limit(tmp_path, monkeypatch):
    from PIL import Image

    from studyrunner.engine.data import load_splits
    from studyrunner.engine.decode import DataError

    root = make_folder(tmp_path / "d", classes=2, per_class=10, split=None, sizes=((20, 20),))
    Image.new("RGB", (200, 200)).save(root / "c0" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 200 x 200 is then over twice the limit
    with pytest.raises(DataError, match=r"huge.png: it has more pixels than PIL's decompression-bomb limit"):
        load_splits(_cfg(root, tmp_path))


def test_test_metric_on_folders_without_a_test_split(tmp_path):
    from studyrunner.engine.data import check_objective_split
    from studyrunner.engine.decode import DataError

    root = make_folder(tmp_path / "d", classes=2, per_class=4, split="train")
    with pytest.raises(DataError, match="has no test split"):
        check_objective_split("test_acc", _cfg(root, tmp_path), None)
    make_folder(root, classes=2, per_class=2, split="test")
    check_objective_split("test_acc", _cfg(root, tmp_path), None)  # now there is one


# --------------------------------------------------------------------------- faults


def test_a_corrupted_image_cache_is_detected_and_rebuilt(tmp_path, caplog):
    from studyrunner.engine.data import load_splits

    root = make_folder(tmp_path / "d", classes=2, per_class=20, split=None)
    first = load_splits(_cfg(root, tmp_path))
    cached = max((tmp_path / "cache").glob("*.pt"), key=lambda p: p.stat().st_size)  # the training images
    raw = bytearray(cached.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(255 - b for b in raw[middle : middle + 64])  # damage inside the image tensor
    cached.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="studyrunner"):
        again = load_splits(_cfg(root, tmp_path))
    assert "rebuilding it" in caplog.text and str(cached) in caplog.text
    assert bool((again.train.images == first.train.images).all()) and bool((again.val.images == first.val.images).all())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="studyrunner"):
        load_splits(_cfg(root, tmp_path))  # the rebuilt file verifies
    assert "rebuilding" not in caplog.text


def test_a_study_whose_trials_all_fail_exits_1_with_the_reason(tmp_path, tiny_data, monkeypatch):
    """The data breaks after validation: every trial FAILs, each with its reason, and the run exits 1."""
    import optuna

    monkeypatch.chdir(tmp_path)
    path = write_sweep(
        tmp_path,
        f"study: doomed\nbudget: {{n_trials: 2}}\nmax_retries: 0\ntrain:\n  data: {{dataset: folder, path: '{tiny_data}', "
        f"image_size: 20, cache_dir: '{tmp_path / 'cache'}'}}\n  epochs: 1\n"
        "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2}\n",
    )
    (tiny_data / "train" / "c0" / "broken.png").write_bytes(b"\x89PNG but not really")
    res = runner.invoke(app, ["run", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
    out = flat(res)
    assert res.exit_code == 1 and "cannot read image" in out and "no reason recorded" not in out, out
    storage = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    trials = optuna.load_study(study_name="doomed", storage=storage).trials
    assert trials and all(t.state == optuna.trial.TrialState.FAIL for t in trials)
    assert all("cannot read image" in t.user_attrs["fail_reason"] for t in trials)
    shown = runner.invoke(app, ["show", "doomed", "--storage", storage])
    assert shown.exit_code == 0 and "cannot read image" in flat(shown)
    import mlflow

    (parent,) = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}").search_runs(
        [mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}").get_experiment_by_name("doomed").experiment_id],
        "tags.`studyrunner.role` = 'parent'",
    )
    assert "cannot read image" in parent.data.tags["last_fail_reason"]


def test_each_process_on_a_study_draws_its_own_sampler_stream(tmp_path, tiny_train):
    """Two processes on one existing study no longer reseed from the trial count: they draw apart."""
    import optuna

    from studyrunner.search.driver import _claim_stream
    from studyrunner.search.samplers import make_sampler
    from tests.conftest import sweep_spec

    spec = sweep_spec(tmp_path, tiny_train, head="sampler: {name: random, seed: 3}\n")
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    draws = []
    for _ in range(2):  # what two processes started at the same moment do, one after the other under the lock
        again = optuna.load_study(study_name="s", storage=storage)
        stream = _claim_stream(again)
        sampler = make_sampler(spec, spec.base_config(), offset=7919 * stream)
        draws.append(sampler.sample_independent(again, again.ask(), "x", optuna.distributions.FloatDistribution(0, 1)))
    assert draws[0] != draws[1]


@pytest.mark.long
@pytest.mark.parametrize("attempt", range(2))
def test_two_runs_started_at_once_on_fresh_stores(tmp_path, tiny_train, attempt):
    """Both finish, one parent run, one experiment, distinct parameters: the setup lock and the
    per-process sampler streams at work (real processes, fresh SQLite files, the same moment)."""
    import mlflow
    import optuna

    path = write_sweep(
        tmp_path,
        f"study: race\nbudget: {{n_trials: 4}}\nsampler: {{name: random, seed: 0}}\n"
        f"{tiny_train.replace('epochs: 3', 'epochs: 1')}"
        "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n",
    )
    storage, tracking = f"sqlite:///{tmp_path / 'o.db'}", f"sqlite:///{tmp_path / 'm.db'}"
    cmd = [sys.executable, "-m", "studyrunner", "run", str(path), "--storage", storage, "--tracking-uri", tracking]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = optuna.load_study(study_name="race", storage=storage).trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    lrs = [t.params["optim.lr"] for t in done]
    assert len(done) >= 4 and len(set(lrs)) == len(lrs), lrs
    client = mlflow.MlflowClient(tracking)
    (exp,) = [e for e in client.search_experiments() if e.name == "race"]
    parents = client.search_runs([exp.experiment_id], "tags.`studyrunner.role` = 'parent'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


def test_a_store_left_with_a_hot_journal_by_a_killed_writer_is_recovered_not_refused(tmp_path):
    """A worker SIGKILLed in the middle of an SQLite write leaves a hot journal; the next worker's
    up-front check must let SQLite roll it back (as any writer does) instead of refusing the store."""
    from studyrunner.stores import check_tracking

    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as conn:
        conn.executescript("CREATE TABLE experiments (x); CREATE TABLE runs (x); INSERT INTO runs VALUES (1);")
    writer = (
        "import os, signal, sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('PRAGMA cache_size=1'); c.execute('BEGIN'); "
        "[c.execute('INSERT INTO runs VALUES (?)', (str(i) * 500,)) for i in range(2000)]; "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", writer, str(db)], check=False)
    assert Path(f"{db}-journal").is_file()  # what the killed writer left
    check_tracking(f"sqlite:///{db}")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1  # the uncommitted rows rolled back

"""A corpus of malformed input: each gets a short message naming file/line/key/value/path, exit
code 1, no traceback, and nothing already recorded changes."""

import hashlib

import pytest
from typer.testing import CliRunner

from studyrunner.cli.main import app
from tests.conftest import make_folder
from tests.search.test_spec import BAD

runner = CliRunner()


def flat(res) -> str:
    return " ".join(res.output.split())


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A study already on disk; every bad invocation must leave its store byte-for-byte alone."""
    import optuna

    root = tmp_path_factory.mktemp("rec")
    storage = root / "optuna.db"
    study = optuna.create_study(study_name="s1", storage=f"sqlite:///{storage}", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    return storage


@pytest.mark.parametrize(("text", "fragments", "line"), BAD, ids=[f"sweep{i}" for i in range(len(BAD))])
def test_malformed_sweeps_through_the_cli(tmp_path, recorded, text, fragments, line):
    before = _digest(recorded)
    sweep = tmp_path / "bad.yaml"
    sweep.write_text(text)
    for command in (
        ["validate", str(sweep)],
        ["run", str(sweep), "--storage", f"sqlite:///{recorded}", "--tracking-uri", "none"],
    ):
        res = runner.invoke(app, command)
        assert res.exit_code == 1, res.output
        out = flat(res)
        assert "Traceback" not in out and out.startswith("error:") and "bad.yaml" in out.replace(" ", "")
        for fragment in fragments:
            assert " ".join(fragment.split()) in out, (fragment, out)
    assert _digest(recorded) == before


def _tree(tmp_path):
    root = make_folder(tmp_path / "own", classes=2, per_class=3, split="train")
    return make_folder(root, classes=2, per_class=2, split="val")


DATA_CASES = {
    "missing data path": (lambda t: t / "nowhere", "does not exist"),
    "empty class folder": (_tree, "holds no images"),
    "unreadable image": (lambda t: _tree(t), "cannot read image"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_is_named(tmp_path, monkeypatch, case):
    monkeypatch.setenv("STUDYRUNNER_CACHE_DIR", str(tmp_path / "cache"))
    make_root, expected = DATA_CASES[case]
    root = make_root(tmp_path)
    if case == "empty class folder":
        (root / "train" / "c9").mkdir()
    if case == "unreadable image":
        (root / "train" / "c1" / "broken.png").write_bytes(b"\x89PNG not really")
    res = runner.invoke(
        app,
        [
            "train",
            "--set",
            "data.dataset=folder",
            "--set",
            f"data.path={root}",
            "--set",
            "epochs=1",
            "--out",
            str(tmp_path / "ck"),
        ],
    )
    assert res.exit_code == 1 and expected in flat(res) and "Traceback" not in res.output
    if case == "unreadable image":
        assert "broken.png" in flat(res).replace(" ", "")

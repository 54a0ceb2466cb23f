import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from studyrunner.bench import frozen, overhead, search_report, throughput
from studyrunner.bench.throughput import run_bench
from studyrunner.cli.bench import bench_app
from tests.conftest import make_folder

runner = CliRunner()


def test_bench_measures_both_pipelines_on_the_same_images(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYRUNNER_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "c", classes=3, per_class=40, split="train", sizes=((32, 32),))
    make_folder(root, classes=3, per_class=2, split="test", sizes=((32, 32),))
    rows = run_bench(str(root), images=64, batch_size=16, workers=0, log=lambda m: None)
    assert [r[0].split(" ")[0] for r in rows] == ["documents'", "engine,", "engine,"]
    assert rows[0][2] == 1.0 and all(speed > 0 for _, speed, _ in rows)
    assert rows[1][2] == rows[1][1] / rows[0][1]


def test_trial_overhead_separates_training_from_the_rest(tmp_path, monkeypatch):
    from studyrunner.bench.overhead import trial_overhead

    monkeypatch.setenv("STUDYRUNNER_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "c", classes=3, per_class=20, split="train", sizes=((32, 32),))
    make_folder(root, classes=3, per_class=2, split="test", sizes=((32, 32),))
    f = trial_overhead(str(root), trials=2, epochs=2, subset=40, log=lambda m: None)
    assert 0 < f["training_s"] < f["total_s"] and f["setup_once_s"] > 0
    assert f["overhead_per_trial_s"] > 0 and f["share_of_1min_trial"] == f["overhead_per_trial_s"] / 60
    # each trial's files reached the artifact store: best.pt, last.pt, history.json (the resume state too)
    assert f["uploaded_mb_per_trial"] > 0 and f["outbox_background_per_trial_s"] > 0
    assert 0 < f["upload_wait_per_trial_s"] < f["overhead_per_trial_s"]


@pytest.mark.long
def test_trial_overhead_through_a_real_artifact_server(tmp_path, monkeypatch):
    from studyrunner.bench.overhead import trial_overhead

    monkeypatch.setenv("STUDYRUNNER_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "c", classes=3, per_class=20, split="train", sizes=((32, 32),))
    make_folder(root, classes=3, per_class=2, split="test", sizes=((32, 32),))
    f = trial_overhead(str(root), trials=2, epochs=2, subset=40, log=lambda m: None, server=True)
    assert f["uploaded_mb_per_trial"] > 0 and 0 < f["upload_wait_per_trial_s"] < f["overhead_per_trial_s"]


# --------------------------------------------------------------------------- the `bench` sub-app


def invoke(*args: str):
    """``studyrunner bench ARGS`` on a wide terminal, with no data root from the environment."""
    return runner.invoke(bench_app, list(args), env={"COLUMNS": "200", "STUDYRUNNER_DATA_DIR": None})


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def calls(monkeypatch):
    """Every benchmark replaced by one that records its arguments and returns fixed figures."""
    seen: dict[str, tuple] = {}

    def fake(name, result):
        def record(*args, **kwargs):
            seen[name] = (args, kwargs)
            return result

        return record

    monkeypatch.setattr(throughput, "run_bench", fake("throughput", [("documents'", 500.0, 1.0), ("engine", 1500.0, 3.0)]))
    monkeypatch.setattr(overhead, "trial_overhead", fake("overhead", {"share_of_1min_trial": 0.005, "total_s": 12.0}))
    monkeypatch.setattr(frozen, "frozen_head", fake("frozen", {"speedup_later_trials": 174.0}))
    monkeypatch.setattr(search_report, "run_search_bench", fake("search", {"tpe.share": 0.62}))
    monkeypatch.setattr("studyrunner.track.machine.machine", lambda: "a test machine")
    return seen


@pytest.mark.parametrize(
    ("command", "options", "module"),
    [
        ("throughput", {"--images": "images", "--batch-size": "batch_size", "--workers": "workers"}, throughput),
        ("overhead", {}, overhead),
        ("frozen", {"--epochs": "epochs"}, frozen),
        ("search", {"--seeds": "seeds", "--out": "out"}, search_report),
    ],
)
def test_each_sub_command_shows_its_options_with_the_benchmarks_settings_as_defaults(command, options, module):
    res = invoke(command, "--help")
    assert res.exit_code == 0, res.output
    text = flat(res.stdout)
    assert f"{command} [OPTIONS]" in text and "--data-dir" in text
    for option, key in options.items():
        assert option in text and f"[default: {module.SETTINGS[key]}]" in text
    if command == "search":
        assert "sweep <path>" in text and "[required]" in text


def test_the_group_help_lists_the_sub_commands_and_not_the_deprecated_flags():
    text = flat(invoke("--help").stdout)
    assert all(c in text for c in ("throughput", "overhead", "frozen", "search"))
    assert "--frozen" not in text and "--trial-overhead" not in text and "--search" not in text


@pytest.mark.parametrize(
    ("args", "deprecation", "error"),
    [
        (
            ["--frozen", "--epochs", "0"],
            "`studyrunner bench --frozen` is deprecated; use `studyrunner bench frozen`",
            "--epochs 0",
        ),
        (
            ["--search", "sweep.yaml", "--seeds", "0"],
            "`studyrunner bench --search SWEEP` is deprecated; use `studyrunner bench search SWEEP`",
            "--seeds 0",
        ),
    ],
)
def test_a_deprecated_flag_says_what_replaces_it_before_it_runs(args, deprecation, error):
    res = invoke(*args)
    assert res.exit_code == 1
    assert res.stderr.splitlines() == [deprecation, f"error: {error}: must be > 0"]


def test_the_deprecated_flags_run_the_sub_command_with_the_options_given(calls, tmp_path):
    res = invoke("--trial-overhead", "--data-dir", str(tmp_path))
    assert res.exit_code == 0, res.output
    deprecation = "`studyrunner bench --trial-overhead` is deprecated; use `studyrunner bench overhead`"
    assert res.stderr.splitlines()[:2] == [deprecation, "on a test machine"]
    assert calls["overhead"][0] == (str(tmp_path),) and "0.50%" in res.stdout  # a share prints as a percentage

    res = invoke("--search", "s.yaml", "--out", str(tmp_path / "rep"))
    assert res.exit_code == 0, res.output
    args, kwargs = calls["search"]
    assert args == (Path("s.yaml"), {}, None, tmp_path / "rep") and kwargs["seeds"] == search_report.SETTINGS["seeds"]

    res = invoke("--frozen", "--epochs", "2")
    assert res.exit_code == 0 and calls["frozen"][1]["epochs"] == 2 and "174.000" in res.stdout


def test_bench_alone_runs_throughput_without_a_deprecation(calls):
    res = invoke("--images", "32", "--workers", "0")
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines() == ["on a test machine"]
    defaults = throughput.SETTINGS
    assert calls["throughput"][0] == (None, 32, defaults["batch_size"], 0)
    assert "1500" in res.stdout and "3.00" in res.stdout
    res = invoke()
    assert res.exit_code == 0
    assert calls["throughput"][0] == (None, defaults["images"], defaults["batch_size"], defaults["workers"])


def test_a_sub_command_takes_its_own_options_and_the_benchmarks_settings_for_the_rest(calls, tmp_path):
    res = invoke("frozen", "--epochs", "4", "--data-dir", str(tmp_path))
    args, kwargs = calls["frozen"]
    assert res.exit_code == 0 and args == (str(tmp_path),) and kwargs["epochs"] == 4
    assert "deprecated" not in res.stderr
    res = invoke("search", "s.yaml")
    args, kwargs = calls["search"]
    assert res.exit_code == 0 and args[3] == Path(search_report.SETTINGS["out"])
    assert kwargs["seeds"] == search_report.SETTINGS["seeds"]


def test_options_before_a_sub_command_are_refused_not_ignored(calls, tmp_path):
    res = invoke("--data-dir", str(tmp_path), "search", "s.yaml")
    assert res.exit_code == 1 and "search" not in calls
    assert "--data-dir before the sub-command" in res.stderr and "studyrunner bench search --data-dir" in res.stderr


def test_versus_runs_the_plain_example_and_studyrunner_on_the_same_budget(tmp_path, monkeypatch):
    from studyrunner.bench.versus import run_versus

    monkeypatch.setenv("STUDYRUNNER_CACHE_DIR", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "c", classes=3, per_class=40, split="train", sizes=((32, 32),))
    make_folder(root, classes=3, per_class=2, split="test", sizes=((32, 32),))
    lines: list[str] = []
    f = run_versus(str(root), log=lines.append, n_trials=2, epochs=2, train_images=60, val_images=30)
    assert f["ratio"] == f["plain_s"] / f["studyrunner_s"] and f["plain_s"] > 0 and f["studyrunner_s"] > 0
    assert 2 <= f["plain_epochs"] <= 4 and 2 <= f["studyrunner_epochs"] <= 4  # 2 trials of at most 2 epochs each
    assert 0 < f["plain_best"] <= 1 and 0 < f["studyrunner_best"] <= 1
    assert any(line.startswith("ratio (plain / studyrunner wall time): ") for line in lines)
    assert lines[0].startswith("machine: ")  # the figures name the machine they ran on
    folder = Path(next(line for line in lines if "stores and checkpoints in " in line).rsplit(" in ", 1)[1].rstrip(")"))
    assert (folder / "checkpoints" / "cifar_lr" / "trial-0" / "best.pt").is_file()  # not the user's runs/checkpoints
    assert "STUDYRUNNER_CHECKPOINTS" not in os.environ
    assert any(line.startswith("studyrunner's best configuration in the plain study: ") for line in lines)

from pathlib import Path

import pytest
import torch

from studyrunner.narrative.runner import run_narrative
from studyrunner.narrative.spec import Claim, judge, load_narrative
from studyrunner.report.results import trial_history
from studyrunner.search.driver import RunOptions
from studyrunner.search.specfile import SpecError
from tests.conftest import make_folder, step_result, write_sweep

STORY = """\
study: story
repeats: 2
scales:
  full: {epochs: 5}
  reduced: {epochs: 2}
base:
  optim: {name: adam, lr: 0.003}
steps:
  - name: plain
    title: 1 plain
    train: {model: {batchnorm: false}}
    document: {train_acc: 0.9}
  - name: bn
    title: 2 batchnorm
    train: {model: {batchnorm: true}}
    full: {epochs: 7}
claims:
  - {id: bn_faster, text: BN is faster, a: bn, b: plain, metric: train_acc@1}
"""


def _story(tmp_path, tiny_train, text=STORY):
    train = tiny_train.replace("train:\n", "").replace("  epochs: 3\n", "")
    train = "".join(line for line in train.splitlines(keepends=True) if not line.startswith("  optim:"))  # base has one
    return write_sweep(tmp_path, text.replace("base:\n", "base:\n" + train), "story.yaml")


def test_steps_resolve_per_scale(tmp_path, tiny_train):
    spec = load_narrative(_story(tmp_path, tiny_train))
    assert [spec.step_config(s, "reduced").epochs for s in spec.steps] == [2, 2]
    assert [spec.step_config(s, "full").epochs for s in spec.steps] == [5, 7]
    sweep = spec.step_sweep(spec.steps[1], "reduced")
    assert sweep.study == "story.reduced.bn" and sweep.budget.n_trials == 2 and sweep.sampler.name == "grid"
    assert sweep.space["seed"].choices == [0, 1] and sweep.base_config().model.batchnorm is True


def test_run_every_step_with_seeds_then_resume_runs_nothing(tmp_path, tiny_train):
    spec = load_narrative(_story(tmp_path, tiny_train))
    opts = RunOptions(storage=f"sqlite:///{tmp_path / 'o.db'}", tracking_uri="none")
    outcomes = run_narrative(spec, "reduced", opts)
    assert [o.study.study_name for o in outcomes] == ["story.reduced.plain", "story.reduced.bn"]
    for o in outcomes:
        assert sorted(t.params["seed"] for t in o.study.trials) == [0, 1]
        assert all(len(trial_history(t)) == 2 for t in o.study.trials)
    again = run_narrative(spec, "reduced", opts)
    assert [len(o.study.trials) for o in again] == [2, 2]


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ("a: bn, b: plain", "a: bn, b: nope", "no step named 'nope'"),
        ("metric: train_acc@1", "metric: accuracy", "claims.0.metric"),
        ("repeats: 2", "repeats: 1", "repeats"),
        ("name: bn\n", "name: plain\n", "step names must be unique"),
        ("model: {batchnorm: true}", "model: {batchnorm: maybe}", "step bn"),
        ("title: 1 plain", "titel: 1 plain", "unknown key"),
    ],
)
def test_narrative_errors(tmp_path, tiny_train, old, new, fragment):
    assert old in STORY
    with pytest.raises(SpecError, match=fragment):
        load_narrative(_story(tmp_path, tiny_train, STORY.replace(old, new, 1)))


def test_shipped_narrative_is_valid_at_both_scales():

    spec = load_narrative(Path(__file__).parents[2] / "studies" / "cifar10_tuning.yaml")
    assert len(spec.steps) == 10 and len(spec.claims) >= 5 and spec.repeats >= 2
    assert {s.name for s in spec.steps} >= {
        "baseline",
        "multistep",
        "adam_multistep",
        "plateau_abs",
        "plateau_rel",
        "batchnorm",
        "dropout_heavy",
        "dropout_light",
        "augment",
    }
    for step in spec.steps:
        assert spec.step_config(step, "reduced").epochs == 30
        assert spec.step_config(step, "full").data.train_subset == 0


@pytest.mark.parametrize("name", ["cifar10_tuning.yaml", "transfer_cifar.yaml", "cifar10_joint.yaml"])
def test_validate_command_accepts_shipped_narratives(tmp_path, name):

    from typer.testing import CliRunner

    from studyrunner.cli.main import app

    path = Path(__file__).parents[2] / "studies" / name
    res = CliRunner().invoke(app, ["validate", str(path), "--data-dir", str(tmp_path)], env={"COLUMNS": "200"})
    out = " ".join(res.output.split())
    assert res.exit_code == 0, out
    assert "valid narrative study" in out and f"{len(load_narrative(path).steps)} steps" in out
    if name == "transfer_cifar.yaml":  # the fine-tune step's own settings are visible before anything runs
        assert "step:pretrain" in out and "backbone x0.1" in out


def test_validate_command_names_a_bad_narrativestep_result(tmp_path, tiny_train):
    from typer.testing import CliRunner

    from studyrunner.cli.main import app

    path = _story(tmp_path, tiny_train, STORY.replace("model: {batchnorm: true}", "model: {batchnorm: maybe}", 1))
    res = CliRunner().invoke(app, ["validate", str(path)])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and out.startswith("error:") and "step bn" in out and "Traceback" not in out


TRANSFER_STORY = """\
study: tl
repeats: 2
scales: {reduced: {}}
base:
  optim: {name: adam, lr: 0.003}
  model: {batchnorm: true}
steps:
  - name: pre
    title: pretrain
    repeats: 1
    train: {data: {classes: [c0, c1, c2]}}
  - name: ft
    title: fine-tune
    train: {data: {classes: [c3, c4]}, model: {init: "step:pre"}}
  - name: fz
    title: frozen
    train: {data: {classes: [c3, c4]}, model: {init: "step:pre", freeze: backbone}}
"""


def test_narrative_steps_start_from_an_earlier_steps_best_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_folder(tmp_path / "five", classes=5, per_class=12, split="train", sizes=((20, 20),))
    make_folder(root, classes=5, per_class=3, split="val", sizes=((20, 20),))
    data = f"  data: {{dataset: folder, path: '{root}', image_size: 20, cache_dir: '{tmp_path / 'c'}'}}\n  epochs: 2\n"
    spec = load_narrative(write_sweep(tmp_path, TRANSFER_STORY.replace("base:\n", "base:\n" + data), "tl.yaml"))
    outcomes = run_narrative(spec, "reduced", RunOptions(storage=f"sqlite:///{tmp_path / 'o.db'}", tracking_uri="none"))
    assert [len(o.study.trials) for o in outcomes] == [1, 2, 2]
    pre_ckpt = outcomes[0].study.best_trial.user_attrs["checkpoint"]
    for o in outcomes[1:]:
        for t in o.study.trials:
            saved = torch.load(t.user_attrs["checkpoint"], map_location="cpu", weights_only=False)
            assert t.state.name == "COMPLETE" and saved["classes"] == ["c3", "c4"]
    assert (tmp_path / "runs" / "checkpoints").is_dir() and pre_ckpt.endswith("best.pt")
    with pytest.raises(Exception, match="must name an earlier step"):
        bad = TRANSFER_STORY.replace('init: "step:pre"}}\n  - name: fz', 'init: "step:fz"}}\n  - name: fz')
        load_narrative(write_sweep(tmp_path, bad.replace("base:\n", "base:\n" + data), "bad.yaml"))


@pytest.mark.parametrize(
    ("a", "b", "margin", "expected"),
    [
        ([0.70, 0.71], [0.60, 0.61], 0.0, "reproduced"),
        ([0.60, 0.61], [0.70, 0.71], 0.0, "not reproduced"),
        ([0.700, 0.705], [0.698, 0.703], 0.0, "inconclusive"),
        ([0.70, 0.71], [0.69, 0.70], 0.05, "not reproduced"),
        ([0.70, 0.80], [0.60, 0.70], 0.0, "inconclusive"),
    ],
)
def test_verdicts(a, b, margin, expected):
    steps = {"a": step_result("a", a), "b": step_result("b", b)}
    claim = Claim(id="c", text="a beats b", a="a", b="b", metric="final_train_acc", margin=margin)
    assert judge(claim, steps).verdict == expected


def test_above_verdict_on_gap():
    steps = {"a": step_result("a", [0.9, 0.9], gap=0.2)}
    claim = Claim(id="g", text="big gap", kind="above", a="a", metric="final_gap", threshold=0.1)
    v = judge(claim, steps)
    assert v.verdict == "reproduced" and v.difference == pytest.approx(0.1)


def test_a_best_of_step_runs_its_search_then_trains_what_it_found_beside_the_hand_tuned_steps(tmp_path, tiny_train):
    """The search runs first (within its epoch budget); the step trains the search's best values
    with the narrative's seeds, and the report puts search and hand-tuning side by side."""
    import optuna

    from studyrunner.report.narrative_md import render_narrative
    from studyrunner.report.results import narrative_result

    search = write_sweep(
        tmp_path,
        "study: search\nbudget: {n_trials: 10, epochs: 6}\npruner: {name: none}\nsampler: {name: random, seed: 3}\n"
        + tiny_train.replace("epochs: 3", "epochs: 2")
        + "space:\n  optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n",
        "search.yaml",
    )
    text = STORY.replace(
        "claims:\n",
        f"  - {{name: joint, title: 3 one search, best_of: {search}}}\nclaims:\n"
        "  - {id: joint_vs_bn, text: the search matches hand-tuning, a: joint, b: bn, metric: best_val_acc}\n",
    )
    spec = load_narrative(_story(tmp_path, tiny_train, text))
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    outcomes = run_narrative(spec, "reduced", RunOptions(storage=storage, tracking_uri="none"))
    searched = optuna.load_study(study_name="search", storage=storage)
    assert len(searched.trials) == 3  # 3 trials of 2 epochs fill budget.epochs 6
    best = max((t for t in searched.trials if t.value is not None), key=lambda t: t.value)
    joint = outcomes[-1].study
    assert joint.study_name == f"story.reduced.joint.trial{best.number}"
    assert sorted(t.params["seed"] for t in joint.trials) == [0, 1]
    assert {t.user_attrs["out_dir"] for t in joint.trials}  # trained, with the search's best learning rate:
    result = narrative_result(spec, "reduced", storage)
    step = result.steps[-1]
    assert step.config["optim"]["lr"] == pytest.approx(best.params["optim.lr"]) and step.search["epochs"] == 6
    markdown = render_narrative(result, None, "studyrunner run story.yaml")
    section = markdown.split("## One study instead of seven steps", 1)[1].split("## ", 1)[0]
    assert "`search`: random, pruner none" in section and "| 3/3 | 6 |" in section
    assert "The best hand-tuned step is " in section and "the search matches hand-tuning" in markdown

    # the search, resumed, holds a better trial: the step retrains that one, beside the earlier retraining
    lr = 3.3e-3
    searched.add_trial(
        optuna.trial.create_trial(
            params={"optim.lr": lr},
            distributions={"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
            value=2.0,
        )
    )
    only = run_narrative(spec, "reduced", RunOptions(storage=storage, tracking_uri="none"), only=["joint"])
    again = only[-1].study
    assert len(only) == 1 and again.study_name == "story.reduced.joint.trial3" and len(again.trials) == 2
    assert len(optuna.load_study(study_name=joint.study_name, storage=storage).trials) == 2  # kept, not retrained
    step = narrative_result(spec, "reduced", storage).steps[-1]
    assert step.config["optim"]["lr"] == pytest.approx(lr) and len(step.runs) == 2 and step.search["best_trial"] == 3


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--step", "nope"], "no step named 'nope'; steps: plain, bn"),
        (["--step", "bn", "--jobs", "2"], "--step: runs in this process"),
    ],
)
def test_run_step_names_a_step_of_the_narrative(tmp_path, tiny_train, args, says):
    from typer.testing import CliRunner

    from studyrunner.cli.main import app

    path = _story(tmp_path, tiny_train, STORY)
    res = CliRunner().invoke(app, ["run", str(path), *args, "--storage", f"sqlite:///{tmp_path / 'o.db'}"])
    out = " ".join(res.output.split())
    assert res.exit_code in (1, 2) and says in out and "Traceback" not in out, out
    assert not (tmp_path / "o.db").exists()  # refused before any store opened


def test_run_step_on_a_sweep_is_refused(tmp_path, tiny_train):
    from typer.testing import CliRunner

    from studyrunner.cli.main import app

    path = write_sweep(tmp_path, "study: s\n" + tiny_train + "space:\n  optim.lr: {low: 1.0e-4, high: 1.0e-2}\n", "s.yaml")
    res = CliRunner().invoke(app, ["run", str(path), "--step", "bn", "--storage", f"sqlite:///{tmp_path / 'o.db'}"])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "is a sweep, not a narrative study with steps" in out, out

"""Rendering is tested on fixed results (golden markdown); effects and importances on studies
whose answer is known."""

import os
from pathlib import Path

import optuna
import pytest

from studyrunner.report import effects, history_info, render_narrative, render_sweep_report
from studyrunner.results import NarrativeResult, StepResult, StudyResult, TrialResult, importances, judge
from studyrunner.spec import Claim

GOLDEN = Path(__file__).parent / "golden"


def _hist(accs, val_gap=0.05):
    return [
        {
            "epoch": i + 1,
            "train_acc": a,
            "val_acc": a - val_gap,
            "train_loss": 1 - a,
            "val_loss": 1.1 - a,
            "lr": 0.001,
            "epoch_seconds": 1.0,
            "images_per_s": 100.0,
        }
        for i, a in enumerate(accs)
    ]


def _fixed_study() -> StudyResult:
    trials = [
        TrialResult(0, "COMPLETE", 0.55, {"optim.name": "adam", "optim.lr": 1e-3}, _hist([0.4, 0.5, 0.6]), 0.54, 30.0),
        TrialResult(
            1,
            "DIVERGED",
            None,
            {"optim.name": "adam", "optim.lr": 5e-2},
            _hist([0.1]),
            None,
            5.0,
            "epoch 1: train loss 344 exceeded 6.91",
        ),
        TrialResult(2, "COMPLETE", 0.35, {"optim.name": "sgd", "optim.lr": 1e-3}, _hist([0.2, 0.3, 0.4]), 0.33, 30.0),
        TrialResult(3, "PRUNED", None, {"optim.name": "sgd", "optim.lr": 2e-4}, _hist([0.1, 0.12]), None, 20.0),
    ]
    return StudyResult(
        "fixed",
        "maximize",
        "val_acc",
        "tpe",
        "median",
        trials,
        {"optim.name": 0.8, "optim.lr": 0.2},
        {"optim.name": "categorical", "optim.lr": "log-float"},
    )


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed; rerun with UPDATE_GOLDEN=1 after checking the diff"


def test_sweep_report_golden(tmp_path):
    text = render_sweep_report([_fixed_study()], None, "studyrunner report fixed")
    _check_golden("sweep_report.md", text)
    assert "diverged" in text and text.rstrip().endswith("```") and "studyrunner report fixed" in text


def test_report_writes_plots_it_links(tmp_path):
    text = render_sweep_report([_fixed_study(), _fixed_study()], tmp_path, "cmd")
    for png in ("fixed_history.png", "fixed_curves.png", "fixed_params.png"):
        assert (tmp_path / png).stat().st_size > 1000 and f"({png})" in text
    assert "one row each" in text


def test_effect_tables_have_the_known_answer():
    tables = effects(_fixed_study())
    name = tables["optim.name"]
    assert name.loc["adam", "mean value"] == 0.55 and name.loc["adam", "diverged"] == 1
    assert name.loc["sgd", "pruned"] == 1 and name.loc["sgd", "best value"] == 0.35
    lr = tables["optim.lr"]
    assert list(lr.index) == ["[1e-4, 1e-3)", "[1e-3, 1e-2)", "[1e-2, 1e-1)"]
    assert lr.loc["[1e-3, 1e-2)", "complete"] == 2 and lr.loc["[1e-2, 1e-1)", "diverged"] == 1


def test_history_info_tracks_best_so_far():
    assert history_info(_fixed_study()) == {"trial": [0.0, 2.0], "value": [0.55, 0.35], "best": [0.55, 0.55]}


def test_importances_find_the_parameter_that_matters():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: 10 * t.suggest_float("x", 0, 1) + 0.01 * t.suggest_float("noise", 0, 1), n_trials=40)
    imp = importances(study)
    assert set(imp) == {"x", "noise"} and imp["x"] > 0.9
    assert importances(study) == imp  # seeded: the same study gives the same numbers


def _step(name, values, gap=0.05):
    runs = [TrialResult(i, "COMPLETE", v, {"seed": i}, _hist([v - 0.1, v], gap), v - 0.01) for i, v in enumerate(values)]
    return StepResult(name, f"step {name}", "setup", "claim", {"train_acc": 0.9, "epochs": 50}, runs, {})


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
    steps = {"a": _step("a", a), "b": _step("b", b)}
    claim = Claim(id="c", text="a beats b", a="a", b="b", metric="final_train_acc", margin=margin)
    assert judge(claim, steps).verdict == expected


def test_above_verdict_on_gap():
    steps = {"a": _step("a", [0.9, 0.9], gap=0.2)}
    claim = Claim(id="g", text="big gap", kind="above", a="a", metric="final_gap", threshold=0.1)
    v = judge(claim, steps)
    assert v.verdict == "reproduced" and v.difference == pytest.approx(0.1)


def test_narrative_report_golden():
    steps = [_step("one", [0.6, 0.62]), _step("two", [0.7, 0.71], gap=0.2)]
    claims = [
        Claim(id="c", text="two beats one", a="two", b="one", metric="final_train_acc"),
        Claim(id="g", text="two overfits", kind="above", a="two", metric="final_gap", threshold=0.1, scale_note="short runs"),
    ]
    by = {s.name: s for s in steps}
    n = NarrativeResult(
        "story",
        "A story, reproduced",
        "A story.",
        "reduced",
        {"epochs": 2, "data": {"train_subset": 100, "val_fraction": 0.1}},
        steps,
        [judge(c, by) for c in claims],
        ["our note"],
        "story.yaml",
    )
    text = render_narrative(n, None, "studyrunner run story.yaml --scale reduced")
    _check_golden("narrative_report.md", text)
    assert "2 reproduced, 0 not reproduced, 0 inconclusive" in text

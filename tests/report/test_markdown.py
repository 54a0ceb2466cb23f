"""Rendering is tested on fixed results (golden markdown); effects and importances on studies
whose answer is known."""

import os
from dataclasses import replace
from pathlib import Path

from studyrunner.narrative.spec import Claim, judge
from studyrunner.report.markdown import effects, history_info, render_sweep_report, spend_info
from studyrunner.report.narrative_md import render_narrative
from studyrunner.report.results import NarrativeResult, StudyResult, TrialResult
from tests.conftest import history, step_result

GOLDEN = Path(__file__).parents[1] / "golden"


def _fixed_study() -> StudyResult:
    trials = [
        TrialResult(0, "COMPLETE", 0.55, {"optim.name": "adam", "optim.lr": 1e-3}, history([0.4, 0.5, 0.6]), 0.54, 30.0),
        TrialResult(
            1,
            "DIVERGED",
            None,
            {"optim.name": "adam", "optim.lr": 5e-2},
            history([0.1]),
            None,
            5.0,
            "epoch 1: train loss 344 exceeded 6.91",
        ),
        TrialResult(2, "COMPLETE", 0.35, {"optim.name": "sgd", "optim.lr": 1e-3}, history([0.2, 0.3, 0.4]), 0.33, 30.0),
        TrialResult(3, "PRUNED", None, {"optim.name": "sgd", "optim.lr": 2e-4}, history([0.1, 0.12]), None, 20.0),
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


def test_best_per_epoch_spent_counts_every_trials_epochs(tmp_path):
    fixed = _fixed_study()  # epochs 3 (0.55), 1 (diverged), 3 (0.35), 2 (pruned)
    late = _fixed_study()
    late.name = "late"
    late.trials = [replace(t, value=0.6 if t.number == 2 else t.value) for t in late.trials]
    curves = spend_info([fixed, late])
    assert curves["fixed"] == ([3.0, 9.0], [0.55, 0.55])
    assert curves["late"] == ([3.0, 7.0, 9.0], [0.55, 0.6, 0.6])
    text = render_sweep_report([fixed, late], tmp_path, "cmd")
    assert (tmp_path / "best_per_epoch.png").stat().st_size > 1000 and "(best_per_epoch.png)" in text
    assert "| fixed | 9 | 0.5500 | 3 | - |" in text and "| late | 9 | 0.6000 | 7 | 7 |" in text


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


def test_narrative_report_golden():
    steps = [step_result("one", [0.6, 0.62]), step_result("two", [0.7, 0.71], gap=0.2)]
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

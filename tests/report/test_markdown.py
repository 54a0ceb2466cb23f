"""Rendering is tested on fixed results (golden markdown); effects and importances on studies
whose answer is known."""

import os
from dataclasses import replace
from pathlib import Path

from studyrunner.narrative.spec import Claim, judge
from studyrunner.report.markdown import (
    confusion_section,
    effects,
    history_info,
    importance_info,
    params_info,
    render_sweep_report,
    spend_info,
    spend_table,
)
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


def _late() -> StudyResult:
    late = _fixed_study()
    late.name = "late"
    late.trials = [replace(t, value=0.6 if t.number == 2 else t.value) for t in late.trials]
    return late


def test_best_per_epoch_spent_counts_every_trials_epochs(tmp_path):
    fixed, late = _fixed_study(), _late()  # epochs 3 (0.55), 1 (diverged), 3 (0.35), 2 (pruned)
    curves = spend_info([fixed, late])
    assert curves["fixed"] == ([3.0, 9.0], [0.55, 0.55])
    assert curves["late"] == ([3.0, 7.0, 9.0], [0.55, 0.6, 0.6])
    text = render_sweep_report([fixed, late], tmp_path, "cmd")
    for png in ("best_per_epoch.png", "best_per_second.png"):
        assert (tmp_path / png).stat().st_size > 1000 and f"({png})" in text
    assert (
        "| fixed | 9 | 85.0 | 55.00% | 3 | 30.0 | - | - |" in text
        and "| late | 9 | 85.0 | 60.00% | 7 | 65.0 | 7 | 65.0 |" in text
    )


def test_spend_counts_seconds_so_a_cheap_epoch_weighs_less():
    fixed, late = _fixed_study(), _late()  # seconds 30 (0.55), 5 (diverged), 30 (0.35 / late 0.6), 20 (pruned)
    assert spend_info([fixed, late], "seconds")["late"] == ([30.0, 65.0, 85.0], [0.55, 0.6, 0.6])
    cheap = _late()  # the same trials, each epoch 0.1 s and no trial duration stored: epoch seconds are summed
    cheap.name = "cheap"
    cheap.trials = [replace(t, duration_s=None, history=[{**e, "epoch_seconds": 0.1} for e in t.history]) for t in cheap.trials]
    xs, _ = spend_info([cheap], "seconds")["cheap"]
    assert [round(x, 6) for x in xs] == [0.3, 0.7, 0.9]
    headers, rows, bar = spend_table([fixed, cheap])  # the CLI prints these as they are
    assert headers[:3] == ["study", "epochs spent", "seconds spent"] and "seconds to its best" in headers
    assert headers[-1] == "seconds to within 1.00 pts of 60.00%" and round(bar, 6) == 0.59
    assert rows[1] == ["cheap", 9, "0.9", "60.00%", 7, "0.7", 7, "0.7"]


def test_effect_tables_have_the_known_answer():
    tables = effects(_fixed_study())
    name = tables["optim.name"]
    assert name.loc["adam", "mean value"] == 0.55 and name.loc["adam", "diverged"] == 1
    assert name.loc["sgd", "pruned"] == 1 and name.loc["sgd", "best value"] == 0.35
    lr = tables["optim.lr"]
    assert list(lr.index) == ["[1e-4, 1e-3)", "[1e-3, 1e-2)", "[1e-2, 1e-1)"]
    assert lr.loc["[1e-3, 1e-2)", "complete"] == 2 and lr.loc["[1e-2, 1e-1)", "diverged"] == 1


def test_history_info_tracks_best_so_far_and_keeps_stopped_trials():
    info = history_info(_fixed_study())  # stopped trials without a stored value: their history's last val_acc
    assert {k: info[k] for k in ("trial", "value", "best")} == {"trial": [0.0, 2.0], "value": [0.55, 0.35], "best": [0.55, 0.55]}
    assert [(n, s, round(v, 6)) for n, s, v in info["stopped"]] == [(1, "DIVERGED", 0.05), (3, "PRUNED", 0.07)]
    study = _fixed_study()  # as Optuna stores it: a pruned trial's value is its last reported one
    study.trials[3] = replace(study.trials[3], value=0.11)
    study.trials[1] = replace(study.trials[1], history=[])  # diverged in its first epoch: nothing reported, not drawn
    assert history_info(study)["stopped"] == [(3, "PRUNED", 0.11)]


def test_params_info_shows_where_pruned_and_diverged_trials_stopped():
    kind, points = params_info(_fixed_study())["optim.lr"]
    assert kind == "log-float"
    assert [(x, round(y, 6), s) for x, y, s in points] == [
        (1e-3, 0.55, "COMPLETE"),
        (5e-2, 0.05, "DIVERGED"),
        (1e-3, 0.35, "COMPLETE"),
        (2e-4, 0.07, "PRUNED"),
    ]


def _many_trials(n: int) -> StudyResult:
    """n complete trials over optim.lr, with optim.name always adam: a parameter that never varied."""
    study = _fixed_study()
    study.trials = [
        TrialResult(i, "COMPLETE", 0.5 + i / 100, {"optim.name": "adam", "optim.lr": 10 ** (-4 + i / n)}, history([0.5]))
        for i in range(n)
    ]
    study.importances = {"optim.lr": 1.0, "optim.name": 0.0}
    return study


def test_importances_wait_for_enough_trials_and_name_what_did_not_vary():
    few = importance_info(_fixed_study())
    assert (few["complete"], few["needs"]) == (2, 8)
    text = render_sweep_report([_fixed_study()], None, "cmd")
    assert "Importances need at least 8 complete trials (this study has 2)." in text and "0.800" not in text
    many = importance_info(_many_trials(8))
    assert (many["complete"], many["needs"]) == (8, 8) and many["importances"] == {"optim.lr": 1.0, "optim.name": None}
    text = render_sweep_report([_many_trials(8)], None, "cmd")
    assert "| optim.lr | 1.000 |" in text and "| optim.name | did not vary |" in text and "| 0.000 |" not in text


def test_the_best_trials_confusion_matrix_is_in_the_report(tmp_path):
    study = _fixed_study()
    assert confusion_section(study, None)[2] == "This study was not tracked (no MLflow store), so no confusion matrix was kept."
    study.tracking_uri = "sqlite:///mlflow.db"
    assert "the best trial's MLflow run holds none" in confusion_section(study, None)[2]
    study.confusion = {"trial": 0, "classes": ["猫", "dog"], "matrix": [[3, 1], [0, 4]]}
    text = render_sweep_report([study], tmp_path, "studyrunner report fixed")
    assert "| true \\ predicted | 猫 | dog | recall |" in text
    assert "| 猫 | 3 | 1 | 75.00% |" in text and "| dog | 0 | 4 | 100.00% |" in text
    assert (tmp_path / "fixed_confusion.png").stat().st_size > 1000 and "(fixed_confusion.png)" in text
    assert text.rstrip().endswith("studyrunner report fixed\n```")


def test_accuracies_are_percentages_with_two_decimals_everywhere():
    text = render_sweep_report([_fixed_study()], None, "cmd")
    assert "| 0 | optim.lr=0.001, optim.name=adam | 55.00% | 55.00% | 55.00% | 60.00% | 5.00 | 3 | 54.00% |" in text
    assert "0.5500" not in text and "55.0%" not in text
    loss = _fixed_study()
    loss.metric, loss.direction = "val_loss", "minimize"  # not an accuracy: 4 decimals
    assert "| 2 | optim.lr=0.001, optim.name=sgd | 0.3500 |" in render_sweep_report([loss], None, "cmd")


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

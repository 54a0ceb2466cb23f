"""Studies read back as plain data: states from the one mapping, metrics, parameters, importances."""

import optuna

from studyrunner.report.markdown import confusion_section, history_info, params_info
from studyrunner.report.results import importance_min_trials, importances, list_studies, study_result, trials_frame
from studyrunner.states import TrialState


def _study(tmp_path) -> tuple[optuna.Study, str]:
    """Three trials as the objective records them: complete, diverged, pruned."""
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    study = optuna.create_study(study_name="r", storage=storage, direction="maximize")
    study.set_user_attr("sweep", {"objective": {"metric": "val_acc"}, "sampler": {"name": "tpe"}, "pruner": {"name": "median"}})
    history = [{"epoch": 1, "train_acc": 0.5, "val_acc": 0.4, "train_loss": 1.0, "val_loss": 1.1, "lr": 0.01}]

    def objective(t: optuna.Trial) -> float:
        lr = t.suggest_float("optim.lr", 1e-4, 1e-1, log=True)
        t.set_user_attr("history", history)
        if t.number == 1:
            t.set_user_attr("outcome", "diverged")
            t.set_user_attr("reason", "epoch 1: train loss became nan")
            raise optuna.TrialPruned()
        if t.number == 2:
            raise optuna.TrialPruned()
        t.set_user_attr("test_acc", 0.39)
        t.set_user_attr("checkpoint", "/ck/best.pt")
        return 0.4 + lr

    study.optimize(objective, n_trials=3)
    return study, storage


def test_trials_frame_and_study_rows(tmp_path):
    study, storage = _study(tmp_path)
    df = trials_frame(study)
    assert list(df.state) == [TrialState.COMPLETE, TrialState.DIVERGED, TrialState.PRUNED]
    assert df.test_acc[0] == 0.39 and df.reason[1] == "epoch 1: train loss became nan" and "param.optim.lr" in df
    (row,) = list_studies(storage)
    assert row.name == "r" and row.counts == {TrialState.COMPLETE: 1, TrialState.DIVERGED: 1, TrialState.PRUNED: 1}
    assert row.best_value == study.best_value and set(row.best_params) == {"optim.lr"}


def test_study_result_is_plain_data(tmp_path):
    study, _ = _study(tmp_path)
    r = study_result(study)
    assert (r.metric, r.sampler, r.pruner, r.checkpoint) == ("val_acc", "tpe", "median", "/ck/best.pt")
    assert [t.number for t in r.ranked()] == [0] and r.distributions == {"optim.lr": "log-float"}
    assert r.trials[0].metric("best_val_acc") == 0.4 and r.trials[0].metric("final_gap") == 0.5 - 0.4


def test_importances_find_the_parameter_that_matters():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: 10 * t.suggest_float("x", 0, 1) + 0.01 * t.suggest_float("noise", 0, 1), n_trials=40)
    imp = importances(study)
    assert set(imp) == {"x", "noise"} and imp["x"] > 0.9
    assert importances(study) == imp  # seeded: the same study gives the same numbers


def test_importances_wait_for_enough_complete_trials():
    assert importance_min_trials(1) == 8 and importance_min_trials(6) == 12  # max(8, 2 x parameters)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=7)
    assert importances(study) == {}  # 7 complete trials: fANOVA's numbers would be noise
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert set(importances(study)) == {"x"}


def test_a_pruned_trial_is_drawn_at_its_last_reported_value(tmp_path):
    study = optuna.create_study(study_name="p", storage=f"sqlite:///{tmp_path / 'p.db'}", direction="maximize")

    def objective(t: optuna.Trial) -> float:
        t.suggest_float("optim.lr", 1e-4, 1e-1, log=True)
        t.report(0.3, 1)
        if t.number == 1:
            t.report(0.2, 2)
            raise optuna.TrialPruned()
        return 0.5

    study.optimize(objective, n_trials=2)
    r = study_result(study)
    assert history_info(r)["stopped"] == [(1, "PRUNED", 0.2)]
    assert [s for _, _, s in params_info(r)["optim.lr"][1]] == ["COMPLETE", "PRUNED"]


def test_the_best_trials_confusion_matrix_is_read_from_its_mlflow_run(tmp_path):
    from studyrunner.config import TrainConfig
    from studyrunner.track.runs import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "r")
    run_id = tracker.start_trial(0, TrainConfig(), {}, {}, ["猫", "犬"])
    study = optuna.create_study(study_name="r", direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    for value, attrs in ((0.5, {"mlflow_run_id": run_id}), (0.4, {})):
        study.add_trial(
            optuna.trial.create_trial(params={"optim.lr": 0.01}, distributions={"optim.lr": lr}, value=value, user_attrs=attrs)
        )
    assert study_result(study).confusion is None and study_result(study).tracking_uri == ""  # not tracked
    study.set_user_attr("tracking_uri", tracker.uri)
    assert study_result(study).confusion is None  # tracked, but the best trial's run holds no matrix yet
    tracker.log_confusion(run_id, ["猫", "犬"], [[3, 1], [0, 4]])
    r = study_result(study)
    assert r.tracking_uri == tracker.uri
    assert r.confusion == {"trial": 0, "classes": ["猫", "犬"], "matrix": [[3, 1], [0, 4]]}
    assert "| 猫 | 3 | 1 | 75.00% |" in "\n".join(confusion_section(r, None))

"""Studies read back as plain data: states from the one mapping, metrics, parameters, importances."""

import optuna

from studyrunner.report.results import importances, list_studies, study_result, trials_frame
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

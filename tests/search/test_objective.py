import optuna
import pytest

from studyrunner.report.results import trial_history
from studyrunner.search.objective import DataSource, Objective
from tests.conftest import sweep_spec


def test_objective_with_fixed_trial_trains_and_returns_best_val_acc(tmp_path, tiny_train):
    spec = sweep_spec(tmp_path, tiny_train)
    objective = Objective(spec, spec.base_config(), DataSource(None))
    trial = optuna.trial.FixedTrial({"optim.lr": 3e-3, "model.batchnorm": True})
    value = objective(trial)
    assert 0.9 <= value <= 1.0  # 4 solid-colour classes: learnt (chance is 0.25)
    assert trial.user_attrs["outcome"] == "completed" and len(trial_history(trial)) == 3
    assert value == max(r["val_acc"] for r in trial_history(trial))


def test_repeats_average_seeds_and_keep_the_spread(tmp_path, tiny_train):
    spec = sweep_spec(tmp_path, tiny_train, head="repeats: 2\n")
    trial = optuna.trial.FixedTrial({"optim.lr": 3e-3, "model.batchnorm": False})
    value = Objective(spec, spec.base_config(), DataSource(None))(trial)
    values = trial.user_attrs["values"]
    assert len(values) == 2 and value == pytest.approx(sum(values) / 2)
    assert trial.user_attrs["value_sd"] >= 0

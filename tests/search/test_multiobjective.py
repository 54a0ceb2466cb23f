"""Several objectives: a Pareto front in ls/show/report, constraints, and pruning on the first
objective through the pruning study that mirrors each trial."""

import optuna
import pytest
from typer.testing import CliRunner

from studyrunner.cli.main import app
from studyrunner.report.results import pareto_front, study_result, trial_history
from studyrunner.search.driver import RunOptions, run_study
from studyrunner.search.specfile import SpecError
from studyrunner.states import TrialState, trial_state
from tests.conftest import sweep_spec

HEAD = (
    "objectives:\n  - {metric: val_acc, direction: maximize}\n  - {metric: num_params, direction: minimize}\n"
    "sampler: {name: tpe, seed: 0, n_startup_trials: 3}\n"
)
SPACE = "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n  model.batchnorm: {choices: [true, false]}\n"


def _opts(tmp_path, **kw):
    return RunOptions(storage=f"sqlite:///{tmp_path / 'optuna.db'}", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", **kw)


def test_a_two_objective_study_runs_and_reports_its_front(tmp_path, tiny_train, monkeypatch):
    spec = sweep_spec(tmp_path, tiny_train.replace("epochs: 3", "epochs: 2"), head=HEAD + "budget: {n_trials: 4}\n", space=SPACE)
    study = run_study(spec, _opts(tmp_path)).study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_acc", "num_params"]  # what optuna-dashboard labels the axes with
    done = [t for t in study.trials if trial_state(t) == TrialState.COMPLETE]
    assert len(done) == 4 and all(len(t.values) == 2 for t in done)
    assert {t.values[1] for t in done} <= {float(t.values[1]) for t in done} and all(t.values[1] > 1000 for t in done)
    front = pareto_front(study)
    assert front and all(not any(_dominates(o, f) for o in done) for f in front)
    result = study_result(study)
    assert result.objectives == [("val_acc", "maximize"), ("num_params", "minimize")] and result.front
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    ls = CliRunner().invoke(app, ["ls", "--storage", storage])
    assert ls.exit_code == 0 and "front:" in ls.output and ".pruning" not in ls.output
    show = CliRunner().invoke(app, ["show", "s", "--storage", storage])
    assert show.exit_code == 0 and "Pareto front (val_acc, num_params)" in show.output
    report = CliRunner().invoke(app, ["report", "s", "--storage", storage, "--out", str(tmp_path / "rep")])
    text = (tmp_path / "rep" / "README.md").read_text()
    assert report.exit_code == 0 and "### Pareto front" in text and "num_params (min)" in text


def _dominates(a, b) -> bool:
    """a is at least as good on both objectives (max val_acc, min num_params) and better on one."""
    ge = a.values[0] >= b.values[0] and a.values[1] <= b.values[1]
    return ge and (a.values[0] > b.values[0] or a.values[1] < b.values[1])


def test_pruning_on_the_first_objective_works_in_a_multi_objective_study(tmp_path, tiny_train):
    """A threshold pruner on val_acc (lower 1.5: no accuracy gets there) prunes every trial right after its
    warm-up epoch: the mirror study decided, the multi-objective trial is PRUNED with the reason."""
    head = HEAD + "budget: {n_trials: 2}\npruner: {name: threshold, lower: 1.5, warmup_epochs: 1, no_learning_epochs: 0}\n"
    spec = sweep_spec(tmp_path, tiny_train, head=head, space=SPACE)
    study = run_study(spec, _opts(tmp_path)).study
    assert [trial_state(t) for t in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    assert all(t.user_attrs["reason"].startswith("pruned after epoch") for t in study.trials)
    assert [len(trial_history(t)) for t in study.trials] == [2, 2]  # warm-up 1 epoch: stopped at epoch 2
    mirror = optuna.load_study(study_name="s.pruning", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in mirror.trials] == [optuna.trial.TrialState.PRUNED] * 2


def test_constraints_mark_trials_infeasible(tmp_path, tiny_train):
    head = HEAD + "budget: {n_trials: 2}\nconstraints: ['num_params <= 10']\n"  # no net is that small
    spec = sweep_spec(tmp_path, tiny_train.replace("epochs: 3", "epochs: 1"), head=head, space=SPACE)
    study = run_study(spec, _opts(tmp_path)).study
    assert all(t.user_attrs["constraints"][0] > 0 for t in study.trials)  # value - bound > 0: infeasible


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        ("objectives:\n  - {metric: val_acc}\n", "objectives needs two or more"),
        (HEAD + "objective: {metric: val_loss}\n", "not both"),
        (HEAD + "constraints: ['num_params < 5']\n", "expected 'METRIC <= NUMBER'"),
        (HEAD + "constraints: ['speed <= 5']\n", "metrics: val_acc"),
        (HEAD.replace("name: tpe", "name: random") + "constraints: ['num_params <= 5']\n", "ignores constraints"),
        ("objectives:\n  - {metric: val_acc}\n  - {metric: val_acc}\n", "each metric may appear once"),
    ],
)
def test_bad_objectives_are_refused(tmp_path, tiny_train, head, expected):
    with pytest.raises(SpecError, match=expected):
        sweep_spec(tmp_path, tiny_train, head=head, space=SPACE)

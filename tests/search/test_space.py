import optuna
import pytest

from studyrunner.search.space import grid_space, suggest
from studyrunner.search.spec import load_sweep
from tests.conftest import write_sweep

SPACE = """\
study: sp
train: {epochs: 2}
space:
  optim.name: {choices: [sgd, adam, rmsprop]}
  optim.lr: {low: 1.0e-4, high: 1.0e-1, log: true}
  optim.momentum: {low: 0.5, high: 0.99, when: {optim.name: [sgd, rmsprop]}}
  optim.nesterov: {choices: [true, false], when: {optim.name: sgd}}
  sched.milestones: {choices: [[30, 80], [5, 80, 100]]}
  batch_size: {low: 32, high: 128, step: 32}
"""


@pytest.fixture
def spec(tmp_path):
    return load_sweep(write_sweep(tmp_path, SPACE))


def test_fixed_trial_gives_typed_overrides(spec):
    trial = optuna.trial.FixedTrial(
        {"optim.name": "adam", "optim.lr": 1e-3, "sched.milestones": "[5, 80, 100]", "batch_size": 64}
    )
    sampled = suggest(trial, spec, spec.base_config())
    assert sampled == {"optim.name": "adam", "optim.lr": 1e-3, "sched.milestones": [5, 80, 100], "batch_size": 64}


def test_conditional_parameters_appear_only_when_their_condition_holds(spec):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    base = spec.base_config()
    seen = {"sgd": set(), "adam": set(), "rmsprop": set()}
    for _ in range(40):
        trial = study.ask()
        params = suggest(trial, spec, base)
        seen[params["optim.name"]].update(params)
        study.tell(trial, 0.0)
    assert "optim.momentum" in seen["sgd"] and "optim.nesterov" in seen["sgd"]
    assert "optim.momentum" in seen["rmsprop"] and "optim.nesterov" not in seen["rmsprop"]
    assert not {"optim.momentum", "optim.nesterov"} & seen["adam"]
    dist = study.trials[0].distributions
    assert isinstance(dist["batch_size"], optuna.distributions.IntDistribution) and dist["batch_size"].step == 32
    assert dist["optim.lr"].log is True


def test_grid_space_enumerates_steps_and_choices(tmp_path):
    spec = load_sweep(
        write_sweep(
            tmp_path,
            """\
study: g
sampler: {name: grid}
space:
  optim.name: {choices: [sgd, adam]}
  batch_size: {low: 32, high: 128, step: 32}
  optim.lr: {low: 0.001, high: 0.003, step: 0.001}
""",
        )
    )
    grid = grid_space(spec, spec.base_config())
    assert grid["batch_size"] == [32, 64, 96, 128] and grid["optim.name"] == ["sgd", "adam"]
    assert grid["optim.lr"] == pytest.approx([0.001, 0.002, 0.003])

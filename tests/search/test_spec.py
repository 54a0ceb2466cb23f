import pytest

from studyrunner.search.spec import load_sweep
from studyrunner.search.specfile import SpecError
from tests.conftest import write_sweep

GOOD = """\
study: s1
objective: {metric: val_acc}
budget: {n_trials: 3}
sampler: {name: tpe, seed: 0}
pruner: {name: median, warmup_epochs: 1}
train:
  epochs: 2
  model: {batchnorm: true}
space:
  optim.name: {choices: [sgd, adam]}
  optim.lr: {low: 1.0e-4, high: 1.0e-1, log: true}
  optim.momentum: {low: 0.8, high: 0.99, when: {optim.name: sgd}}
  sched.patience: {low: 2, high: 20}
  model.dropout: {choices: [[0.5, 0.5, 0.5, 0.5], [0.3, 0.3, 0.1, 0.0]]}
"""


def test_good_sweep_parses_with_types_and_defaults(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, GOOD))
    base = spec.base_config()
    assert spec.study == "s1" and spec.objective.resolved_direction == "maximize"
    assert base.epochs == 2 and base.model.batchnorm is True
    assert spec.space["sched.patience"].kind(base, "sched.patience") == "int"
    assert spec.space["optim.lr"].kind(base, "optim.lr") == "float"
    assert spec.space["optim.momentum"].when == {"optim.name": "sgd"}


def test_loss_objective_minimises_by_default(tmp_path):
    spec = load_sweep(write_sweep(tmp_path, "study: s\nobjective: {metric: val_loss}\n"))
    assert spec.objective.resolved_direction == "minimize"


def _replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


# every malformed sweep: (file text, message fragments, line)
BAD = [
    (_replace("study: s1", "study: ''"), ["study"], 1),
    (_replace("study: s1", "study: a b"), ["study", "pattern"], 1),
    ("objective: {metric: val_acc}\n", ["study: required key is missing"], None),
    (_replace("metric: val_acc", "metric: accuracy"), ["objective.metric", "'val_acc'", "'accuracy'"], 2),
    (_replace("{metric: val_acc}", "{metric: val_acc, direction: up}"), ["objective.direction", "'maximize'"], 2),
    (_replace("n_trials: 3", "n_trials: 0"), ["budget.n_trials", "greater than or equal to 1"], 3),
    (_replace("n_trials: 3", "n_trials: many"), ["budget.n_trials", "integer"], 3),
    (_replace("name: tpe", "name: bayes"), ["sampler.name", "'tpe'", "'random'", "'grid'"], 4),
    (_replace("name: median", "name: early"), ["pruner.name", "'hyperband'"], 5),
    (_replace("warmup_epochs: 1", "warmup_epochs: -1"), ["pruner.warmup_epochs"], 5),
    (_replace("budget:", "budgett:"), ["budgett", "unknown key", "allowed here", "budget"], 3),
    (_replace("{name: tpe, seed: 0}", "{name: tpe, sed: 0}"), ["sampler.sed", "unknown key", "seed"], 4),
    (_replace("epochs: 2", "epochs: two"), ["train", "epochs: got 'two', expected an integer"], 7),
    (_replace("batchnorm: true", "batchnrm: true"), ["unknown config key 'model.batchnrm'", "model.batchnorm"], 8),
    (_replace("optim.name: {choices", "optim.nam: {choices"), ["unknown config key 'optim.nam'"], 10),
    (_replace("low: 1.0e-4, high: 1.0e-1", "low: 1.0e-1, high: 1.0e-4"), ["inverted range", "low 0.1"], 11),
    (_replace("low: 1.0e-4, high: 1.0e-1", "low: 0.0, high: 1.0e-1"), ["log range must be > 0"], 11),
    (_replace("{low: 2, high: 20}", "{low: 2}"), ["needs choices", "low and high"], 13),
    (_replace("{choices: [sgd, adam]}", "{choices: []}"), ["choices must not be empty"], 10),
    (_replace("{choices: [sgd, adam]}", "{choices: [sgd, lion]}"), ["optim.name", "'lion'", "'rmsprop'"], 10),
    (_replace("{low: 0.8, high: 0.99,", "{low: 0.8, high: 1.5,"), ["optim.momentum", "value 1.5", "[0, 1)"], 12),
    (_replace("[0.5, 0.5, 0.5, 0.5]", "[1.5, 0.5, 0.5, 0.5]"), ["model.dropout", "dropout values must be in"], 14),
    (_replace("when: {optim.name: sgd}", "when: {optim.name: lbfgs}"), ["'lbfgs' is not among"], 12),
    (_replace("when: {optim.name: sgd}", "when: {sched.name: step}"), ["'sched.name' must be a parameter listed before"], 12),
    (_replace("{low: 2, high: 20}", "{low: 2.5, high: 20}"), ["sched.patience", "value 2.5", "expected an integer"], 13),
    (_replace("name: tpe", "name: grid"), ["grid sampler needs choices or a step"], 11),
    (_replace("name: median", "name: threshold"), ["threshold pruner needs lower"], 5),
    (_replace("epochs: 2", "epochs: 2\n  data: {val_fraction: 0.0}"), ["val_acc needs a validation split"], 2),
    ("study: [unclosed\n", ["invalid YAML"], 2),
    ("- just\n- a list\n", ["expected a mapping"], 1),
    (_replace("  optim.lr: {low", "  optim.lr: {lo"), ["optim.lr", "unknown key", "allowed here", "low, high"], 11),
]


@pytest.mark.parametrize(("text", "fragments", "line"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_every_spec_error_names_file_line_key(tmp_path, text, fragments, line):
    path = write_sweep(tmp_path, text)
    with pytest.raises(SpecError) as exc:
        load_sweep(path)
    msg = str(exc.value)
    assert msg.startswith(str(path)), msg
    if line is not None:
        assert f"line {line}" in msg, msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_sweep(tmp_path / "nope.yaml")


def test_shipped_sweeps_are_valid():
    from pathlib import Path

    files = sorted(Path(__file__).parents[2].joinpath("sweeps").glob("*.yaml"))
    assert len(files) >= 4
    for f in files:
        spec = load_sweep(f)
        assert spec.space and spec.study == f.stem


def test_a_conditional_value_is_validated_where_its_condition_holds(tmp_path):
    """model.head_dropout exists on efficientnet_lite0 only: under when: {model.name: [efficientnet_lite0]}
    it is valid although the default model has none; without the condition it is refused."""
    space = "space:\n  model.name: {choices: [efficientnet_lite0, resnet18]}\n"
    when = "when: {model.name: [efficientnet_lite0]}"
    ok = write_sweep(tmp_path, f"study: s\n{space}  model.head_dropout: {{low: 0.0, high: 0.5, {when}}}\n")
    assert load_sweep(ok).space["model.head_dropout"].when == {"model.name": ["efficientnet_lite0"]}
    bad = write_sweep(tmp_path, f"study: s\n{space}  model.head_dropout: {{low: 0.0, high: 0.5}}\n", "bad.yaml")
    with pytest.raises(SpecError, match="model.head_dropout applies to efficientnet_lite0 only"):
        load_sweep(bad)

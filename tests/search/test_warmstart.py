"""What a study starts from: enqueued configurations, an earlier study's trials (warm start),
and the rules that stop it early (no learning, convergence); the best trial exported as YAML."""

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from studyrunner.cli.main import app
from studyrunner.config import config_to_dict
from studyrunner.engine.resolve import resolve_config
from studyrunner.errors import StudyrunnerError
from studyrunner.search.driver import RunOptions, run_study
from studyrunner.search.spec import load_train_config
from studyrunner.states import TrialState, trial_state
from tests.conftest import sweep_spec

LR = "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"


def _opts(tmp_path, **kw):
    return RunOptions(storage=f"sqlite:///{tmp_path / 'optuna.db'}", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", **kw)


def test_enqueued_configurations_run_first_and_once(tmp_path, tiny_train):
    head = "budget: {n_trials: 3}\nsampler: {name: random, seed: 0}\nenqueue:\n  - {optim.lr: 0.005}\n  - {optim.lr: 0.002}\n"
    spec = sweep_spec(tmp_path, tiny_train.replace("epochs: 3", "epochs: 1"), head=head, space=LR)
    study = run_study(spec, _opts(tmp_path)).study
    assert [t.params["optim.lr"] for t in study.trials[:2]] == [0.005, 0.002]
    assert study.trials[2].params["optim.lr"] not in (0.005, 0.002)
    again = run_study(spec, _opts(tmp_path, n_trials=4)).study  # resumed: the entries are not queued again
    assert [t.params["optim.lr"] for t in again.trials].count(0.005) == 1


def test_an_enqueued_value_outside_the_space_is_refused(tmp_path, tiny_train):
    from studyrunner.search.specfile import SpecError

    with pytest.raises(SpecError, match=r"enqueue\[0\]: optim.lr=0.5 is outside the space"):
        sweep_spec(tmp_path, tiny_train, head="enqueue:\n  - {optim.lr: 0.5}\n", space=LR)


def _earlier(tmp_path, spec, values):
    """An earlier study of the same fixed configuration whose trials sampled ``values`` of optim.lr."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    earlier = optuna.create_study(study_name="pilot", storage=storage, direction="maximize")
    earlier.set_user_attr("base_config", config_to_dict(resolve_config(spec.base_config())))  # as studyrunner stores it
    dist = {"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    for i, lr in enumerate(values):
        earlier.add_trial(optuna.trial.create_trial(params={"optim.lr": lr}, distributions=dist, value=0.5 + i / 100))
    return earlier


def test_warm_start_imports_only_trials_that_fit_the_space(tmp_path, tiny_train):
    train = tiny_train.replace("epochs: 3", "epochs: 1")
    spec = sweep_spec(tmp_path, train, head="budget: {n_trials: 1}\nwarm_start: {study: pilot}\n", space=LR)
    _earlier(tmp_path, spec, [2e-3, 5e-2, 4e-3, 5e-4])  # 5e-2 and 5e-4 lie outside 1e-3 .. 1e-2
    study = run_study(spec, _opts(tmp_path)).study
    states = [trial_state(t) for t in study.trials]
    assert states.count(TrialState.IMPORTED) == 2 and states.count(TrialState.COMPLETE) == 1  # imports do not count
    assert sorted(t.params["optim.lr"] for t in study.trials if trial_state(t) == TrialState.IMPORTED) == [2e-3, 4e-3]
    again = run_study(spec, _opts(tmp_path, n_trials=2)).study  # imported once, not again on resume
    assert [trial_state(t) for t in again.trials].count(TrialState.IMPORTED) == 2


def test_warm_start_from_another_fixed_configuration_is_refused(tmp_path, tiny_train):
    spec = sweep_spec(tmp_path, tiny_train, head="warm_start: {study: pilot}\n", space=LR)
    base = config_to_dict(resolve_config(spec.base_config()))
    _earlier(tmp_path, spec, [2e-3]).set_user_attr("base_config", {**base, "epochs": 99})
    with pytest.raises(StudyrunnerError, match="trained another fixed configuration .*epochs: 99 -> 3"):
        run_study(spec, _opts(tmp_path))


def test_a_study_stops_when_converged_and_says_why(tmp_path, tiny_train):
    head = "budget: {n_trials: 10, patience: 2, min_improvement: 1.0}\n"  # nothing can improve by a whole 1.0
    spec = sweep_spec(tmp_path, tiny_train.replace("epochs: 3", "epochs: 1"), head=head, space=LR)
    outcome = run_study(spec, _opts(tmp_path))
    assert len(outcome.study.trials) == 3 and outcome.stopped.startswith("converged") and not outcome.failed
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("s").experiment_id], "tags.`studyrunner.role` = 'parent'")
    assert parent.info.status == "FINISHED" and parent.data.tags["stop_reason"].startswith("converged")


def test_noise_margin_needs_repeats(tmp_path, tiny_train):
    from studyrunner.search.specfile import SpecError

    with pytest.raises(SpecError, match="noise is measured with repeats >= 2"):
        sweep_spec(tmp_path, tiny_train, head="budget: {patience: 3}\n", space=LR)


def test_a_trial_that_cannot_learn_is_pruned_at_once_and_a_learner_is_not(tmp_path, tiny_train):
    """SGD at lr 1e-7 outputs the same thing for 2 epochs: PRUNED 'no learning' although the median
    pruner's warm-up (5 epochs) would never act; Adam at 3e-3 learns and completes."""
    head = (
        "budget: {n_trials: 2}\npruner: {name: median, warmup_epochs: 5, no_learning_epochs: 2}\n"
        "enqueue:\n  - {optim.name: sgd, optim.lr: 1.0e-7}\n  - {optim.name: adam, optim.lr: 3.0e-3}\n"
    )
    space = "space:\n  optim.name: {choices: [sgd, adam]}\n  optim.lr: {low: 1.0e-7, high: 1.0e-2, log: true}\n"
    train = tiny_train.replace("epochs: 3", "epochs: 6").replace("model", "model") + "  model: {batchnorm: false}\n"
    spec = sweep_spec(tmp_path, train, head=head, space=space)
    study = run_study(spec, _opts(tmp_path)).study
    stuck, learner = study.trials
    assert trial_state(stuck) == TrialState.PRUNED and stuck.user_attrs["reason"].startswith("no learning: after epoch 2")
    assert len(stuck.intermediate_values) == 2
    assert trial_state(learner) == TrialState.COMPLETE and learner.value > 0.5  # learned well above chance (0.25)


def test_export_best_writes_a_config_train_runs_again(tmp_path, tiny_train, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = sweep_spec(tmp_path, tiny_train.replace("epochs: 3", "epochs: 1"), head="budget: {n_trials: 2}\n", space=LR)
    study = run_study(spec, _opts(tmp_path)).study
    res = CliRunner().invoke(app, ["export", "s", "--best", "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"])
    path = tmp_path / "runs" / "exports" / "s-best.yaml"
    assert res.exit_code == 0 and path.is_file(), res.output
    cfg = load_train_config(path)
    assert cfg.optim.lr == pytest.approx(study.best_params["optim.lr"]) and cfg.epochs == 1 and cfg.device == "auto"
    exported = yaml.safe_load(path.read_text())
    assert exported["data"]["path"] == tiny_train.split("path: '")[1].split("'")[0]  # the folder its trials read
    assert exported["out_dir"] == "" and exported["data"]["cache_dir"] == ""  # where it runs is the training machine's
    assert f"trial {study.best_trial.number}" in path.read_text()

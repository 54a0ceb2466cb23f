"""Every sampler and pruner name the sweep format allows builds; an unknown one lists the valid names."""

import typing

import optuna
import pytest

from studyrunner.errors import StudyrunnerError
from studyrunner.search.samplers import PRUNERS, SAMPLERS, make_pruner, make_sampler
from studyrunner.search.spec import PrunerSpec, SamplerSpec, SweepSpec

SPACE = {"optim.lr": {"low": 1e-4, "high": 1e-2, "step": 1e-4}}


def _spec(sampler: dict, pruner: dict | None = None) -> SweepSpec:
    return SweepSpec.model_validate({"study": "s", "sampler": sampler, "pruner": pruner or {}, "space": SPACE})


def test_the_factories_cover_exactly_the_names_the_sweep_format_allows():
    assert set(SAMPLERS) == set(typing.get_args(SamplerSpec.model_fields["name"].annotation))
    assert set(PRUNERS) == set(typing.get_args(PrunerSpec.model_fields["name"].annotation))


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("grid", optuna.samplers.GridSampler),
        ("cmaes", optuna.samplers.CmaEsSampler),
        ("gp", optuna.samplers.GPSampler),
        ("qmc", optuna.samplers.QMCSampler),
    ],
)
def test_each_sampler(name, cls):
    spec = _spec({"name": name, "seed": 3})
    assert isinstance(make_sampler(spec, spec.base_config()), cls)


@pytest.mark.parametrize(
    ("pruner", "cls"),
    [
        ({"name": "none"}, optuna.pruners.NopPruner),
        ({"name": "median"}, optuna.pruners.MedianPruner),
        ({"name": "percentile"}, optuna.pruners.PercentilePruner),
        ({"name": "successive_halving"}, optuna.pruners.SuccessiveHalvingPruner),
        ({"name": "hyperband"}, optuna.pruners.HyperbandPruner),
        ({"name": "threshold", "lower": 0.2}, optuna.pruners.ThresholdPruner),
        ({"name": "patient"}, optuna.pruners.PatientPruner),
    ],
)
def test_each_pruner(pruner, cls):
    assert isinstance(make_pruner(_spec({"name": "tpe"}, pruner)), cls)


def test_an_unknown_name_lists_the_valid_ones():
    spec = _spec({"name": "tpe"})
    bad = spec.model_copy(update={"sampler": SamplerSpec.model_construct(name="bayes", seed=0, n_startup_trials=None)})
    with pytest.raises(StudyrunnerError, match="sampler.name 'bayes' is not known; valid: tpe, random, grid"):
        make_sampler(bad, bad.base_config())
    bad = spec.model_copy(update={"pruner": PrunerSpec.model_construct(name="asha")})
    with pytest.raises(StudyrunnerError, match="pruner.name 'asha' is not known; valid: none, median"):
        make_pruner(bad)


def test_an_offset_gives_another_stream_and_the_same_offset_the_same_one():
    spec = _spec({"name": "random", "seed": 0})

    def first_lrs(offset: int) -> list[float]:
        study = optuna.create_study(sampler=make_sampler(spec, spec.base_config(), offset))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        return [t.params["x"] for t in study.trials]

    assert first_lrs(0) == first_lrs(0) and first_lrs(0) != first_lrs(7919)


def test_warmup_epochs_are_the_epochs_that_cannot_be_pruned(tmp_path):
    """Epochs are 1-based steps and Optuna prunes from step == n_warmup_steps: warmup_epochs 2
    keeps epochs 1 and 2 safe, the earliest prune is at epoch 3."""
    import optuna

    from studyrunner.search.samplers import make_pruner
    from studyrunner.search.spec import load_sweep
    from tests.conftest import write_sweep

    spec = load_sweep(write_sweep(tmp_path, "study: w\npruner: {name: median, warmup_epochs: 2, startup_trials: 0}\n"))
    study = optuna.create_study(direction="maximize", pruner=make_pruner(spec))
    for value in (0.9, 0.9):  # two finished trials at 0.9 every epoch
        t = study.ask()
        for epoch in (1, 2, 3):
            t.report(value, epoch)
        study.tell(t, value)
    bad = study.ask()
    verdicts = []
    for epoch in (1, 2, 3):
        bad.report(0.1, epoch)
        verdicts.append(bad.should_prune())
    assert verdicts == [False, False, True]

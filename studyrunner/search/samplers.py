"""The sweep's Optuna sampler and pruner, built from its ``sampler:`` and ``pruner:`` sections.

Every name the sweep format allows has a factory here; a name without one is an error that lists
the valid names (never a silent default).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import optuna

from studyrunner.config import TrainConfig
from studyrunner.errors import StudyrunnerError
from studyrunner.search.space import grid_space
from studyrunner.search.spec import PrunerSpec, SweepSpec

__all__ = ["SAMPLERS", "PRUNERS", "make_sampler", "make_pruner"]

SamplerFactory = Callable[[SweepSpec, TrainConfig, int | None, dict[str, Any]], optuna.samplers.BaseSampler]


def _tpe(spec: SweepSpec, seed: int | None, startup: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """TPE; constraints reach it through ``trial.set_constraint`` (the objective sets them)."""
    s = spec.sampler
    return optuna.samplers.TPESampler(seed=seed, multivariate=s.multivariate or s.group, group=s.group, **startup)


def _pbt(spec: SweepSpec, base: TrainConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    from studyrunner.search.pbt import PBTSampler

    return PBTSampler(spec, base, seed)


SAMPLERS: dict[str, SamplerFactory] = {
    "tpe": lambda spec, base, seed, startup: _tpe(spec, seed, startup),
    "random": lambda spec, base, seed, startup: optuna.samplers.RandomSampler(seed=seed),
    "grid": lambda spec, base, seed, startup: optuna.samplers.GridSampler(grid_space(spec, base), seed=seed),
    "cmaes": lambda spec, base, seed, startup: optuna.samplers.CmaEsSampler(seed=seed, **startup),
    "gp": lambda spec, base, seed, startup: optuna.samplers.GPSampler(seed=seed, **startup),
    "qmc": lambda spec, base, seed, startup: optuna.samplers.QMCSampler(seed=seed),
    "pbt": lambda spec, base, seed, startup: _pbt(spec, base, seed),
}


def _warmup(p: PrunerSpec) -> int:
    """Optuna's n_warmup_steps: a trial can be pruned from step == n_warmup_steps on, and steps are
    1-based epochs here, so ``warmup_epochs`` epochs are safe when it is warmup_epochs + 1."""
    return p.warmup_epochs + 1


def _median(p: PrunerSpec) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=_warmup(p))


PRUNERS: dict[str, Callable[[PrunerSpec], optuna.pruners.BasePruner]] = {
    "none": lambda p: optuna.pruners.NopPruner(),
    "median": _median,
    "percentile": lambda p: optuna.pruners.PercentilePruner(
        p.percentile, n_startup_trials=p.startup_trials, n_warmup_steps=_warmup(p)
    ),
    "successive_halving": lambda p: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=p.min_resource, reduction_factor=p.reduction_factor
    ),
    "hyperband": lambda p: optuna.pruners.HyperbandPruner(
        min_resource=1 if p.min_resource == "auto" else p.min_resource, reduction_factor=p.reduction_factor
    ),
    "threshold": lambda p: optuna.pruners.ThresholdPruner(lower=p.lower, upper=p.upper, n_warmup_steps=_warmup(p)),
    "patient": lambda p: optuna.pruners.PatientPruner(_median(p), patience=p.patience, min_delta=p.min_delta),
}


def make_sampler(spec: SweepSpec, base: TrainConfig, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sweep's sampler. ``offset`` shifts the seed so that a resumed study, or another worker
    on it, does not draw the same parameters again; the same offset gives the same suggestions."""
    s = spec.sampler
    if s.name not in SAMPLERS:
        raise StudyrunnerError(f"{spec.source or spec.study}: sampler.name {s.name!r} is not known; valid: {', '.join(SAMPLERS)}")
    seed = None if s.seed is None else (s.seed + offset) % 2**32  # numpy's seed range
    startup: dict[str, Any] = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    with warnings.catch_warnings():  # GP and QMC are marked experimental by Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[s.name](spec, base, seed, startup)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if spec.pruner.name not in PRUNERS:
        raise StudyrunnerError(
            f"{spec.source or spec.study}: pruner.name {spec.pruner.name!r} is not known; valid: {', '.join(PRUNERS)}"
        )
    return PRUNERS[spec.pruner.name](spec.pruner)

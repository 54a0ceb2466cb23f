"""Search space -> ``trial.suggest_*`` -> config overrides, with conditional parameters.

Parameters are suggested in file order; one whose ``when`` condition does not hold (on an
earlier parameter's value or a fixed ``train`` value) is not suggested at all, so Optuna sees
the true conditional space. Categorical choices that are lists (dropout patterns, milestones)
travel through Optuna as their JSON text and come back as lists.
"""

from __future__ import annotations

import json
from typing import Any

import optuna

from studyrunner.config import TrainConfig
from studyrunner.search.spec import ParamSpec, SweepSpec, choice_label

__all__ = ["suggest", "grid_space", "decode", "distributions", "optuna_params", "holds"]


def decode(v: Any) -> Any:
    """Inverse of the JSON labelling of list-valued choices."""
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def holds(when: dict[str, Any] | None, values: dict[str, Any]) -> bool:
    for key, want in (when or {}).items():
        wants = want if isinstance(want, list) else [want]
        if choice_label(values.get(key)) not in [choice_label(w) for w in wants]:
            return False
    return True


def _suggest_one(trial: optuna.Trial, key: str, p: ParamSpec, kind: str) -> Any:
    if kind == "categorical":
        return decode(trial.suggest_categorical(key, [choice_label(c) for c in p.choices or []]))
    assert p.low is not None and p.high is not None
    if kind == "int":
        return trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(key, float(p.low), float(p.high), step=p.step, log=p.log)


def suggest(trial: optuna.Trial, spec: SweepSpec, base: TrainConfig) -> dict[str, Any]:
    """Sample ``spec.space`` on ``trial``; returns the dotted-key overrides that were sampled."""
    values: dict[str, Any] = dict(spec.train)
    sampled: dict[str, Any] = {}
    for key, p in spec.space.items():
        if not holds(p.when, values):
            continue
        values[key] = sampled[key] = _suggest_one(trial, key, p, p.kind(base, key))
    return sampled


def grid_space(spec: SweepSpec, base: TrainConfig) -> dict[str, list[Any]]:
    """Every parameter's values, for Optuna's GridSampler (validation ensured choices or a step)."""
    return {key: p.grid_values(p.kind(base, key)) for key, p in spec.space.items()}


def distributions(spec: SweepSpec, base: TrainConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    """Every parameter's Optuna distribution, as ``suggest`` samples it."""
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for key, p in spec.space.items():
        kind = p.kind(base, key)
        if kind == "categorical":
            out[key] = optuna.distributions.CategoricalDistribution([choice_label(c) for c in p.choices or []])
        elif kind == "int":
            assert p.low is not None and p.high is not None
            out[key] = optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            assert p.low is not None and p.high is not None
            out[key] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def optuna_params(values: dict[str, Any], dists: dict[str, optuna.distributions.BaseDistribution]) -> dict[str, Any] | None:
    """``values`` (space keys -> values) as Optuna parameters, or None when one lies outside its
    distribution or is not a parameter of the space."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        dist = dists.get(key)
        if dist is None:
            return None
        v = choice_label(value)
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            if v not in dist.choices:
                return None
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not dist.low <= v <= dist.high:  # type: ignore[attr-defined]
            return None
        out[key] = int(v) if isinstance(dist, optuna.distributions.IntDistribution) else v
    return out

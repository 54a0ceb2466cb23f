"""Sweep files: YAML validated (pydantic) before anything runs; errors carry file, line and key.

A sweep names a study, its objective and budget, the Optuna sampler and pruner, fixed ``train``
overrides of TrainConfig and the ``space`` to search (floats/ints with ``log``/``step``,
categorical ``choices`` and conditional parameters with ``when``). See README, "Sweep files".
"""

from __future__ import annotations

import contextlib
import json
import math
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from studyrunner.config import ConfigError, TrainConfig, allowed_keys, apply_overrides, flatten
from studyrunner.search.specfile import Problem, SpecError, StrictModel, load_spec, load_yaml

__all__ = [
    "is_mutable",
    "choice_label",
    "ObjectiveSpec",
    "Budget",
    "SamplerSpec",
    "PrunerSpec",
    "ParamSpec",
    "WarmStart",
    "ResourcesSpec",
    "SweepSpec",
    "load_sweep",
    "load_train_config",
    "METRICS",
    "parse_constraint",
]

MAX_NAME = 100  # characters of a study name (an MLflow experiment and run name too)
MAX_REPEATS = 100  # seeds per configuration: beyond this a trial is a benchmark, not a search step
MAX_RETRIES = 20  # re-runs of a failing trial: beyond this the failure is not transient
MAX_GRID = 100_000  # grid points the grid sampler may enumerate
METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "test_acc", "test_loss")
_MAXIMIZE = ("val_acc", "train_acc", "test_acc")


class ObjectiveSpec(StrictModel):
    # num_params and epoch_seconds (mean seconds per epoch) are for multi-objective studies (`objectives:`)
    metric: Literal["val_acc", "val_loss", "train_acc", "train_loss", "test_acc", "test_loss", "num_params", "epoch_seconds"] = (
        "val_acc"
    )
    direction: Literal["maximize", "minimize"] | None = None  # default: maximize accuracies, minimize losses

    @property
    def resolved_direction(self) -> str:
        return self.direction or ("maximize" if self.metric in _MAXIMIZE else "minimize")


class Budget(StrictModel):
    n_trials: int = Field(20, ge=1)  # finished trials the study holds in total (resume tops up to this)
    timeout: float | None = Field(None, gt=0)  # seconds for this invocation
    # stop the study early once the best value has not improved by more than min_improvement over
    # the last `patience` finished trials (None = run all n_trials)
    patience: int | None = Field(None, ge=1)
    min_improvement: float | Literal["noise"] = "noise"  # noise = twice the seeds' standard deviation (needs repeats >= 2)
    # epochs the study may train in all (every seed, pruned trials too): a trial starts only while a
    # full one still fits, so the study never spends more (None = no limit)
    epochs: int | None = Field(None, ge=1)


class SamplerSpec(StrictModel):
    name: Literal["tpe", "random", "grid", "cmaes", "gp", "qmc", "pbt"] = "tpe"
    seed: int | None = Field(0, ge=0, lt=2**32)  # numpy's seed range
    n_startup_trials: int | None = Field(None, ge=0)  # tpe/cmaes/gp: random trials before modelling
    multivariate: bool = False  # tpe: model the parameters jointly (Optuna's multivariate TPE)
    group: bool = False  # tpe with multivariate: one model per set of parameters that appear together (`when:`)
    # pbt (population-based training): members trained side by side, `interval` epochs at a time; after each
    # interval the bottom `quantile` copy the state of a top-`quantile` member and perturb its values
    population: int = Field(8, ge=2, le=256)
    interval: int = Field(3, ge=1)  # epochs between exploit/explore decisions
    quantile: float = Field(0.25, gt=0, le=0.5)
    perturb: tuple[float, float] = (0.8, 1.2)  # factors a copied value is multiplied by (one, at random)
    resample: float = Field(0.25, ge=0, le=1)  # chance that a copied value is drawn afresh from its range instead


class PrunerSpec(StrictModel):
    name: Literal["none", "median", "percentile", "successive_halving", "hyperband", "threshold", "patient"] = "none"
    warmup_epochs: int = Field(0, ge=0)  # median/percentile: epochs before a trial can be pruned
    startup_trials: int = Field(5, ge=0)  # median/percentile: trials that finish before pruning starts
    percentile: float = Field(25.0, gt=0, lt=100)  # percentile pruner
    min_resource: int | Literal["auto"] = "auto"  # successive_halving/hyperband: epochs
    reduction_factor: int = Field(3, ge=2)  # successive_halving/hyperband
    lower: float | None = None  # threshold pruner: prune below this
    upper: float | None = None  # threshold pruner: prune above this
    patience: int = Field(3, ge=0)  # patient pruner: epochs without improvement
    min_delta: float = Field(0.0, ge=0)  # patient pruner: least improvement that counts
    # any pruner (none too): stop a trial still at chance level after this many epochs, PRUNED "no learning"; 0 = off
    no_learning_epochs: int = Field(2, ge=0)


Scalar = bool | int | float | str


class ParamSpec(StrictModel):
    """One search dimension: ``choices`` (categorical) or ``low``/``high`` (int or float)."""

    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    type: Literal["float", "int", "categorical"] | None = None  # inferred when omitted
    when: dict[str, Scalar | list[Scalar]] | None = None  # condition on earlier parameters / train values

    @model_validator(mode="after")
    def _check(self) -> ParamSpec:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs choices: [...] or both low and high")
        if not self.low < self.high:
            raise ValueError(f"empty or inverted range: low {self.low} must be < high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log range must be > 0, got low {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self

    def grid_count(self) -> int:
        """Points of this dimension on a grid (choices, or low..high by step), counted, not listed."""
        if self.choices is not None:
            return len(self.choices)
        assert self.low is not None and self.high is not None and self.step is not None
        return int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1

    def grid_values(self, kind: str) -> list[Any]:
        """This dimension's grid: its choices as Optuna labels, or low..high by step (ints for an int kind)."""
        if self.choices is not None:
            return [choice_label(c) for c in self.choices]
        assert self.low is not None and self.high is not None and self.step is not None
        vals = [self.low + i * self.step for i in range(self.grid_count())]
        return [int(round(v)) for v in vals] if kind == "int" else [round(v, 12) for v in vals]

    def kind(self, base: TrainConfig, key: str) -> str:
        """categorical, int (an int config field, or type: int) or float."""
        if self.type:
            return self.type
        if self.choices is not None:
            return "categorical"
        return "int" if _is_int_field(base, key) else "float"


class WarmStart(StrictModel):
    study: str = Field(min_length=1)  # an earlier study's name
    storage: str | None = None  # its Optuna storage (default: this study's)


class ResourcesSpec(StrictModel):
    """What Ray reserves for each trial (``run --ray``); ``--cpus-per-trial`` and ``--gpus-per-trial`` win."""

    cpus: float = Field(1.0, gt=0)  # CPU cores per trial; its torch threads follow (at least 1)
    gpus: float = Field(0.0, ge=0)  # GPUs per trial: 0.25 = four trials share one GPU

    @field_validator("cpus", "gpus")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():  # Ray splits one device, never several
            raise ValueError(f"{v:g}: a share above 1 must be a whole number (e.g. 0.5, 1 or 2)")
        return v


class SweepSpec(StrictModel):
    study: str = Field(min_length=1, max_length=MAX_NAME, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    objective: ObjectiveSpec = ObjectiveSpec()
    budget: Budget = Budget()
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    repeats: int = Field(1, ge=1, le=MAX_REPEATS)  # seeds per configuration; the trial's value is their mean
    max_retries: int = Field(1, ge=0, le=MAX_RETRIES)  # re-runs of a trial that failed by exception
    train: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    # two or more: a multi-objective study (Pareto front); the first objective drives pruning and reports
    objectives: list[ObjectiveSpec] = Field(default_factory=list)
    constraints: list[str] = Field(default_factory=list)  # "num_params <= 2e6": a trial that breaks one is infeasible
    enqueue: list[dict[str, Any]] = Field(default_factory=list)  # known configurations run first (space keys -> values)
    warm_start: WarmStart | None = None  # finished trials of an earlier study that fit this space inform the sampler
    resources: ResourcesSpec = ResourcesSpec()  # per trial, when trials run as Ray tasks (run --ray)
    source: str = ""  # the file it came from (set by load_sweep)

    @field_validator("train", mode="before")
    @classmethod
    def _flat(cls, v: Any) -> Any:
        return flatten(v) if isinstance(v, dict) else v

    @model_validator(mode="before")
    @classmethod
    def _first_objective(cls, data: Any) -> Any:
        """With ``objectives:``, ``objective`` is the first of them (it drives pruning and reports)."""
        if isinstance(data, dict) and isinstance(data.get("objectives"), list) and data["objectives"]:
            if "objective" in data and data["objective"] != data["objectives"][0]:  # a dumped spec holds both, equal
                raise ValueError("give objective (one) or objectives (several), not both")
            if len(data["objectives"]) == 1:
                raise ValueError("objectives needs two or more entries; for one, use objective")
            data = {**data, "objective": data["objectives"][0]}
        return data

    @property
    def targets(self) -> list[ObjectiveSpec]:
        """The study's objectives, in order (one for an ordinary study)."""
        return list(self.objectives) or [self.objective]

    @property
    def directions(self) -> list[str]:
        return [o.resolved_direction for o in self.targets]

    def grid_size(self) -> int:
        """Points of the full grid (the grid sampler needs choices or a step on every parameter)."""
        return math.prod(p.grid_count() for p in self.space.values())

    def base_config(self, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """TrainConfig with the fixed ``train`` part, then the command-line overrides (which win), applied
        and validated once; "auto" is left for each trial to decide (``trialconfig``)."""
        return apply_overrides(TrainConfig(), {**self.train, **(overrides or {})})


def load_sweep(path: str | Path) -> SweepSpec:
    """Parse and fully validate a sweep file (space, train overrides, conditions, values)."""
    return load_spec(path, SweepSpec, _semantic_problems)


def _semantic_problems(spec: SweepSpec) -> list[Problem]:
    """What types alone cannot catch: keys, value ranges against TrainConfig, conditions, sampler fit."""
    try:
        base = spec.base_config()
    except ConfigError as exc:
        return [(f"train: {exc}", ("train", *exc.key.split(".")))]
    keys = set(allowed_keys())
    for i, (name, p) in enumerate(spec.space.items()):
        if name not in keys:
            return [(f"space: unknown config key {name!r}; allowed: {', '.join(sorted(keys))}", ("space", name))]
        problems = _condition_problems(spec, name, p, list(spec.space)[:i]) + _range_problems(spec, base, name, p)
        if problems:
            return problems[:1]
    problems = _grid_problems(spec) + _objective_problems(spec, base) + _enqueue_problems(spec, base)
    if spec.budget.patience and spec.budget.min_improvement == "noise" and spec.repeats < 2:
        problems.append(
            (
                "budget.min_improvement: noise is measured with repeats >= 2; set repeats or give a number (e.g. 0.005)",
                ("budget", "min_improvement"),
            )
        )
    if spec.pruner.name == "threshold" and spec.pruner.lower is None and spec.pruner.upper is None:
        problems.append(("pruner: the threshold pruner needs lower and/or upper", ("pruner",)))
    return problems + _pbt_problems(spec, base)


def is_mutable(key: str) -> bool:
    """A space key PBT may change mid-training (``model.dropout.2`` is one position of ``model.dropout``)."""
    from studyrunner.engine.checkpoint import MUTABLE_KEYS

    return key != "epochs" and (key in MUTABLE_KEYS or key.rsplit(".", 1)[0] in MUTABLE_KEYS)


def _pbt_problems(spec: SweepSpec, base: TrainConfig) -> list[Problem]:
    """PBT trains members in segments and sets their values itself: what it cannot run with."""
    from studyrunner.engine.checkpoint import MUTABLE_KEYS

    if spec.sampler.name != "pbt":
        return []
    mutable = [k for k, p in spec.space.items() if p.choices is None and is_mutable(k)]
    checks = [
        (spec.pruner.name == "none", "pruner.name must be none: PBT replaces pruning with exploit/explore", ("pruner",)),
        (spec.repeats == 1, "repeats must be 1 with sampler pbt (a member is one training run)", ("repeats",)),
        (not spec.objectives, "sampler pbt ranks members on one objective; give objective, not objectives", ("objectives",)),
        (
            base.sched.name == "none" and not any(k.startswith("sched.") for k in spec.space),
            "sampler pbt sets the learning rate itself: leave sched.name none and sched.* out of the space",
            ("train",),
        ),
        (
            bool(mutable),
            f"sampler pbt needs a range (low/high) on one of {', '.join(sorted(MUTABLE_KEYS - {'epochs'}))}",
            ("space",),
        ),
        (spec.sampler.perturb[0] > 0 and spec.sampler.perturb[1] > 0, "sampler.perturb factors must be > 0", ("sampler",)),
        (base.state_every == 1, "sampler pbt copies a member's state at every interval: state_every must be 1", ("train",)),
    ]
    return [(text, loc) for ok, text, loc in checks if not ok][:1]


def _grid_problems(spec: SweepSpec) -> list[Problem]:
    """A grid must be small enough to enumerate, and hold at least the budget's trials."""
    if spec.sampler.name != "grid":
        return []
    for name, p in spec.space.items():
        if p.choices is None and p.step is None:
            return [(f"space.{name}: the grid sampler needs choices or a step for every parameter", ("space", name))]
    points = spec.grid_size()
    if points > MAX_GRID:
        return [(f"space: the grid has {points} points, more than {MAX_GRID}; use coarser steps or another sampler", ("space",))]
    if spec.budget.n_trials > points:
        return [
            (
                f"budget.n_trials {spec.budget.n_trials} exceeds the grid's {points} points (each runs once); "
                f"set it to at most {points}",
                ("budget", "n_trials"),
            )
        ]
    return []


_CONSTRAINT_RE = r"^\s*([a-z_]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$"


def parse_constraint(text: str) -> tuple[str, str, float]:
    """``"num_params <= 2e6"`` -> ("num_params", "<=", 2e6); a ValueError says what is allowed."""
    import re

    match = re.match(_CONSTRAINT_RE, text)
    allowed = ", ".join(typing.get_args(ObjectiveSpec.model_fields["metric"].annotation))
    if not match or match.group(1) not in allowed.split(", "):
        raise ValueError(f"constraint {text!r}: expected 'METRIC <= NUMBER' or 'METRIC >= NUMBER'; metrics: {allowed}")
    try:
        bound = float(match.group(3))
    except ValueError:
        raise ValueError(f"constraint {text!r}: {match.group(3)!r} is not a number") from None
    if not math.isfinite(bound):
        raise ValueError(f"constraint {text!r}: the bound must be finite")
    return match.group(1), match.group(2), bound


def _objective_problems(spec: SweepSpec, base: TrainConfig) -> list[Problem]:
    """Each objective's split exists; constraints parse and need a sampler that honours them."""
    for i, target in enumerate(spec.targets):
        for problem, loc in _metric_problems(target.metric, base):
            return [(problem, ("objectives", i) if spec.objectives else loc)]
    if len({o.metric for o in spec.targets}) != len(spec.targets):
        return [("objectives: each metric may appear once", ("objectives",))]
    for i, text in enumerate(spec.constraints):
        try:
            parse_constraint(text)
        except ValueError as exc:
            return [(f"constraints[{i}]: {exc}", ("constraints", i))]
    if spec.constraints and spec.sampler.name != "tpe":
        return [(f"constraints: the {spec.sampler.name} sampler ignores constraints; use sampler.name tpe", ("constraints",))]
    return []


def _enqueue_problems(spec: SweepSpec, base: TrainConfig) -> list[Problem]:
    """Each enqueued configuration names space keys only, with values inside their ranges or choices."""
    for i, entry in enumerate(spec.enqueue):
        loc = ("enqueue", i)
        for key, value in flatten(entry).items():
            p = spec.space.get(key)
            if p is None:
                return [(f"enqueue[{i}]: {key!r} is not a space parameter; space: {', '.join(spec.space)}", loc)]
            inside = (
                choice_label(value) in [choice_label(c) for c in p.choices]
                if p.choices is not None
                else isinstance(value, (int, float)) and not isinstance(value, bool) and p.low <= value <= p.high  # type: ignore[operator]
            )
            if not inside:
                allowed = p.choices if p.choices is not None else f"{p.low} .. {p.high}"
                return [(f"enqueue[{i}]: {key}={value!r} is outside the space ({allowed})", loc)]
        try:
            apply_overrides(base, flatten(entry))
        except ConfigError as exc:
            return [(f"enqueue[{i}]: {exc}", loc)]
    return []


def _metric_problems(metric: str, base: TrainConfig) -> list[Problem]:
    """The objective's split must exist: no val_* without a validation split, no test_* without a test set."""
    if metric.startswith("val_") and base.data.val_fraction == 0 and base.data.dataset == "cifar10":
        return [(f"objective: {metric} needs a validation split; set train.data.val_fraction > 0", ("objective",))]
    if metric.startswith("test_") and base.data.val_from == "test":
        return [
            (
                f"objective: {metric} needs a test set, but train.data.val_from=test makes the test images the "
                "validation set; use a val_ metric",
                ("objective",),
            )
        ]
    return []


def _condition_problems(spec: SweepSpec, name: str, p: ParamSpec, earlier: list[str]) -> list[Problem]:
    """``when`` names an earlier parameter (or a fixed train key) and one of its choices."""
    for cond, want in (p.when or {}).items():
        loc = ("space", name, "when", cond)
        if cond not in earlier and cond not in spec.train:
            return [(f"space.{name}.when: {cond!r} must be a parameter listed before {name!r} or a fixed train key", loc)]
        cp = spec.space.get(cond)
        wants = want if isinstance(want, list) else [want]
        if cp is not None and cp.choices is not None and not set(map(choice_label, wants)) <= set(map(choice_label, cp.choices)):
            return [(f"space.{name}.when: {want!r} is not among {cond}'s choices {cp.choices}", loc)]
    return []


def _condition_values(spec: SweepSpec, p: ParamSpec, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Values under which ``p`` is sampled: the first wanted value of each ``when`` condition, and
    of the conditions those parameters have in turn."""
    values: dict[str, Any] = {}
    for cond, want in (p.when or {}).items():
        cp = spec.space.get(cond)
        if cp is not None and cond not in seen:
            values.update(_condition_values(spec, cp, (*seen, cond)))
        values[cond] = (want if isinstance(want, list) else [want])[0]
    return values


def _range_problems(spec: SweepSpec, base: TrainConfig, name: str, p: ParamSpec) -> list[Problem]:
    """Every choice (or both bounds) is a valid value of the key where the parameter applies (its
    ``when`` conditions holding, not the default model); int ranges are whole; grids are finite."""
    loc = ("space", name)
    with contextlib.suppress(ConfigError):  # conditions that do not combine with the fixed values: judged on the base
        base = apply_overrides(base, _condition_values(spec, p))
    for v in p.choices if p.choices is not None else [p.low, p.high]:
        try:
            apply_overrides(base, {name: _int_if_whole(v) if p.choices is None else v})
        except ConfigError as exc:
            return [(f"space.{name}: value {v!r} is not allowed: {exc}", loc)]
    if p.kind(base, name) == "int" and not all(float(v).is_integer() for v in (p.low, p.high)):  # type: ignore[arg-type]
        return [(f"space.{name}: int range needs whole-number bounds, got {p.low}..{p.high}", loc)]
    return []


def _is_int_field(base: TrainConfig, key: str) -> bool:
    obj: Any = base
    for part in key.split("."):
        obj = obj[int(part)] if isinstance(obj, tuple) else getattr(obj, part)  # model.dropout.2: a list's position
    return isinstance(obj, int) and not isinstance(obj, bool)


def _int_if_whole(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def choice_label(v: Any) -> Any:
    """A choice as Optuna stores it: categorical values must be scalars, so lists and mappings
    (dropout patterns, milestones) travel as their JSON text (``space.decode`` turns them back)."""
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def load_train_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a YAML file of (nested or dotted) config keys, then ``overrides``.

    A sweep file is accepted too: its fixed ``train:`` section is used.
    """
    cfg = TrainConfig()
    if path is not None:
        data = load_yaml(path)
        if "space" in data or "study" in data:
            data = data.get("train") or {}
        try:
            cfg = apply_overrides(cfg, data)
        except ConfigError as exc:
            raise SpecError(f"{path}: {exc}") from None
    return apply_overrides(cfg, overrides or {})

"""The time-to-quality benchmark of search strategies, part 1: the table.

How little training does each sampler, pruner and stopping rule need to find a configuration as
good as the unpruned search finds? The benchmark is tabular. Every configuration of the sweep's
space, discretised (each float to K points), is trained once for all its epochs with the engine,
and the curves are stored in ``table.json`` (written after each configuration, so an interrupted
build resumes). :mod:`studyrunner.bench.search_replay` replays that table with real Optuna samplers
and pruners; :mod:`studyrunner.bench.search_report` writes what it shows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from studyrunner.config import TrainConfig, apply_overrides
from studyrunner.engine.data import Splits, load_splits
from studyrunner.engine.fit import fit
from studyrunner.engine.resolve import resolve_config
from studyrunner.errors import StudyrunnerError
from studyrunner.files import atomic_write
from studyrunner.search.space import holds
from studyrunner.search.spec import ParamSpec, SweepSpec
from studyrunner.track.machine import machine

__all__ = [
    "Point",
    "Curve",
    "Table",
    "grid_axes",
    "space_conditions",
    "config_id",
    "load_table",
    "save_table",
    "build_table",
]

# 7 log-spaced points step a learning-rate range of 1e-5..1e-1 by 2/3 of a decade: the shipped
# 28-configuration table then trains in about 23 minutes on 2 CPU cores (the table's size is the
# product of its axes' lengths, so each point costs as many configurations as the other axes combine)
GRID_POINTS = 7
TABLE_VERSION = 1  # bumped when the file's layout changes: an older table.json is rebuilt, not misread
Log = Callable[[str], None]


@dataclass
class Point:
    """One epoch of a stored curve (what the pruners and the no-learning rule read)."""

    epoch: int  # 1-based
    train_loss: float  # nan when the loss was not finite
    train_acc: float  # fraction in [0, 1]
    val_acc: float | None  # None when the epoch diverged before validation
    seconds: float  # training + validation wall time of the epoch


@dataclass
class Curve:
    """One configuration trained for all its epochs (or until it diverged)."""

    params: dict[str, Any]  # dotted config keys -> the grid's values
    points: list[Point]
    outcome: str = "completed"  # the engine's: completed | diverged
    reason: str = ""  # why it diverged

    @property
    def best(self) -> float | None:
        """The best validation accuracy over its epochs (the objective's value of a val metric)."""
        vals = [p.val_acc for p in self.points if p.val_acc is not None and math.isfinite(p.val_acc)]
        return max(vals) if vals else None

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.points)

    def diverged(self, epochs: int) -> bool:
        return self.outcome == "diverged" or len(self.points) < epochs

    def to_json(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "outcome": self.outcome,
            "reason": self.reason,
            "epochs": [{**p.__dict__, "train_loss": _finite(p.train_loss)} for p in self.points],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Curve:
        points = [Point(**{**e, "train_loss": math.nan if e["train_loss"] is None else e["train_loss"]}) for e in d["epochs"]]
        return cls(dict(d["params"]), points, d["outcome"], d.get("reason", ""))


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None  # strict JSON has no NaN or Infinity


@dataclass
class Table:
    """Every configuration's curve, keyed by :func:`config_id`; ``key`` fingerprints the setup."""

    key: str
    epochs: int
    axes: dict[str, list[Any]]  # parameter -> its grid values, in the space's order
    classes: int = 0  # known once the data is loaded
    n_eval: int = 0  # validation images (the no-learning rule's chance band)
    setup: dict[str, Any] = field(default_factory=dict)  # what the report states: images, device, precision
    curves: dict[str, Curve] = field(default_factory=dict)
    ordered: list[str] = field(default_factory=list)  # discretised ranges (replayed by index); the rest are categorical
    when: dict[str, dict[str, Any]] = field(default_factory=dict)  # a conditional parameter -> its sweep condition

    def active(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` less the parameters whose ``when`` does not hold on the ones before them."""
        params: dict[str, Any] = {}
        for name in self.axes:
            if name in values and holds(self.when.get(name), params):
                params[name] = values[name]
        return params

    def configs(self) -> list[dict[str, Any]]:
        """Every configuration of the grid, in a fixed order; a conditional parameter only where its
        condition holds (so ``sched.step_size`` multiplies the ``step`` configurations alone)."""
        found: dict[str, dict[str, Any]] = {}
        for values in itertools.product(*self.axes.values()):
            params = self.active(dict(zip(self.axes, values, strict=True)))
            found.setdefault(config_id(params), params)
        return list(found.values())

    def curve(self, params: Mapping[str, Any]) -> Curve:
        return self.curves[config_id(params)]

    def in_grid(self) -> list[Curve]:
        """The stored curves of this grid's configurations (a narrower sweep leaves others stored)."""
        return [self.curves[i] for i in map(config_id, self.configs()) if i in self.curves]

    def best(self) -> Curve:
        """The configuration with the table's highest best validation accuracy."""
        return max(self.in_grid(), key=lambda c: -1.0 if c.best is None else c.best)

    def to_json(self) -> dict[str, Any]:
        head = {k: getattr(self, k) for k in ("key", "epochs", "axes", "classes", "n_eval", "setup", "ordered", "when")}
        return {"version": TABLE_VERSION, **head, "curves": [c.to_json() for c in self.curves.values()]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Table:
        curves = [Curve.from_json(c) for c in d["curves"]]
        by_id = {config_id(c.params): c for c in curves}
        head = (d["key"], d["epochs"], d["axes"], d["classes"], d["n_eval"], d["setup"])
        return cls(*head, by_id, d.get("ordered", []), d.get("when", {}))


def config_id(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True)


def _axis_values(p: ParamSpec, kind: str, points: int) -> list[Any]:
    """A parameter's grid: its choices, or ``points`` log-spaced (linear without ``log``) values."""
    if p.choices is not None:
        return list(p.choices)
    assert p.low is not None and p.high is not None
    if p.log:
        vals = [math.exp(math.log(p.low) + i * (math.log(p.high) - math.log(p.low)) / (points - 1)) for i in range(points)]
    else:
        vals = [p.low + i * (p.high - p.low) / (points - 1) for i in range(points)]
    if kind == "int":
        return sorted({round(v) for v in vals})
    return [float(f"{v:.6g}") for v in vals]  # short, stable values in the JSON and the report


def _check_space(spec: SweepSpec) -> None:
    """What the tabular benchmark needs of a sweep: a val_acc objective, a space (conditions on
    choices only, so that the grid is finite) and one data set for all configurations."""
    where = spec.source or spec.study
    if spec.objective.metric != "val_acc" or spec.objective.resolved_direction != "maximize":
        raise StudyrunnerError(f"{where}: the search benchmark replays val_acc, maximized; the sweep's objective differs")
    if not spec.space:
        raise StudyrunnerError(f"{where}: the search benchmark needs a space to search")
    for name in spec.space:
        if name.startswith("data."):
            raise StudyrunnerError(f"{where}: space.{name}: the search benchmark trains every configuration on the same data")


def space_conditions(spec: SweepSpec, axes: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """Each conditional parameter's conditions on other parameters. A condition on a fixed train
    key is decided here, as the sampler decides it: held, it is dropped; failed, the parameter
    leaves ``axes`` (no configuration has it)."""
    when: dict[str, dict[str, Any]] = {}
    for name, p in spec.space.items():
        on_space = {k: v for k, v in (p.when or {}).items() if k in spec.space}
        if not holds({k: v for k, v in (p.when or {}).items() if k not in spec.space}, dict(spec.train)):
            axes.pop(name, None)
        elif on_space:
            when[name] = on_space
    return when


def grid_axes(spec: SweepSpec, base: TrainConfig, points: int) -> dict[str, list[Any]]:
    """Every space parameter's grid values, in the space's order."""
    if points < 2:
        raise StudyrunnerError(f"grid points must be at least 2, got {points}")
    return {name: _axis_values(p, p.kind(base, name), points) for name, p in spec.space.items()}


def _table_key(spec: SweepSpec, overrides: Mapping[str, Any], points: int, base: TrainConfig) -> str:
    """A fingerprint of what shapes every curve: the sweep's train section, the overrides, the grid,
    and the device and precision they ran at. The space is not in it: a curve is stored under its
    parameters, so a wider space (another choice, a conditional parameter) trains only the
    configurations it adds. The budget, sampler and pruner only shape the replay; a new TrainConfig
    field keeps the table too (a changed default is not seen: delete table.json to rebuild). Device
    and precision count as resolved, so a sweep that names fp32 and one that lets a machine without
    bf16 resolve it to fp32 share a table."""
    setup = {
        "train": {k: v for k, v in spec.train.items() if k not in ("device", "precision")},  # counted as resolved, below
        "overrides": dict(overrides),
        "grid_points": points,
        "device": base.device,
        "precision": base.precision,
    }
    return hashlib.sha1(json.dumps(setup, sort_keys=True, default=str).encode()).hexdigest()


def load_table(path: Path, key: str) -> Table | None:
    """The table stored at ``path`` when it was built for ``key``, else None."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != TABLE_VERSION or data.get("key") != key:
        return None
    return Table.from_json(data)


def save_table(path: Path, table: Table) -> None:
    """Write atomically: an interrupted build leaves the previous complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(table.to_json(), indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _train_curve(base: TrainConfig, params: Mapping[str, Any], splits: Splits) -> Curve:
    cfg = resolve_config(apply_overrides(base, params))
    result = fit(cfg, splits)
    points = [Point(r.epoch, r.train_loss, r.train_acc, r.val_acc, r.epoch_seconds) for r in result.history]
    return Curve(dict(params), points, result.outcome, result.reason)


def _describe(table: Table, cfg: TrainConfig, splits: Splits) -> None:
    """Record what the curves were measured on (once, when the data is first loaded)."""
    table.classes = len(splits.classes)
    table.n_eval = len(splits.val) if splits.val is not None else len(splits.train)
    table.setup = {
        "train_images": len(splits.train),
        "val_images": table.n_eval,
        "model": cfg.model.name,
        "batch_size": cfg.batch_size,
        "device": cfg.device,
        "precision": cfg.precision,
        "training_seed": cfg.seed,
        "threads": cfg.threads,
        "machine": machine(),  # where the seconds were measured
    }


def build_table(
    spec: SweepSpec,
    overrides: Mapping[str, Any],
    data_dir: str | None,
    path: Path,
    grid_points: int = GRID_POINTS,
    log: Log = print,
    splits: Splits | None = None,
) -> Table:
    """Train every configuration of the discretised space once, for all epochs, on one load of
    the data (``splits`` when given); the table is saved after each configuration and a later
    call trains only what is missing (a wider space: what it adds). A changed train section,
    override or grid starts a new table; the budget, sampler and pruner only shape the replay."""
    _check_space(spec)
    base = spec.base_config(dict(overrides))
    resolved = resolve_config(base)
    key = _table_key(spec, overrides, grid_points, resolved)
    table = load_table(path, key)
    if table is None:
        if path.exists():
            log(f"{path} holds another setup's table; starting afresh")
        table = Table(key, resolved.epochs, {})
    table.axes = grid_axes(spec, resolved, grid_points)  # this sweep's grid; curves of another grid stay stored
    table.ordered = [name for name, p in spec.space.items() if p.choices is None]
    table.when = space_conditions(spec, table.axes)
    todo = [p for p in table.configs() if config_id(p) not in table.curves]
    log(f"{len(table.configs())} configurations x {table.epochs} epochs: {len(todo)} to train, {len(table.curves)} in {path}")
    for i, params in enumerate(todo, 1):
        if splits is None:
            splits = replace(load_splits(resolved.data, data_dir), test=None)  # the benchmark reads validation only
        if not table.classes:
            _describe(table, resolved, splits)
        curve = _train_curve(base, params, splits)
        table.curves[config_id(params)] = curve
        save_table(path, table)
        best = "-" if curve.best is None else f"{100 * curve.best:.1f}%"
        end = "" if curve.outcome == "completed" else f", {curve.outcome} after epoch {len(curve.points)}"
        log(f"[{i}/{len(todo)}] {params_text(params)}: best val_acc {best}, {curve.seconds:.0f} s{end}")
    return table


def params_text(params: Mapping[str, Any]) -> str:
    """``key=value, ...`` of a configuration (floats as %g), for the log and the report."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())

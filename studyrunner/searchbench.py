"""The time-to-quality benchmark of search strategies: how little training does each sampler,
pruner and stopping rule need to find a configuration as good as the unpruned search finds?

It is tabular. Every configuration of the sweep's space, discretised (each float to K points),
is trained once for all its epochs with the engine, and the curves are stored in ``table.json``
(written after each configuration, so an interrupted build resumes). The strategies then replay
that table with real Optuna samplers and pruners over several sampler seeds: a trial looks up its
curve, reports it epoch by epoch exactly as the objective does, and pays for the epochs it
consumed. Replay takes seconds, and every strategy sees the same curves, so the comparison holds
no training noise between strategies.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import statistics
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna

from . import plots
from .config import TrainConfig, apply_overrides
from .data import Splits, load_splits
from .engine import fit, resolve_config
from .environment import machine
from .errors import StudyrunnerError
from .report import md_table
from .rules import chance_band, no_learning
from .spec import ParamSpec, SweepSpec, load_sweep

__all__ = [
    "Point",
    "Curve",
    "Table",
    "TrialLog",
    "Replay",
    "Summary",
    "STRATEGIES",
    "REFERENCE",
    "TOLERANCE",
    "grid_axes",
    "config_id",
    "load_table",
    "save_table",
    "build_table",
    "replay",
    "run_strategies",
    "to_target",
    "summarise",
    "figures",
    "anytime_info",
    "summary_table",
    "render_report",
    "run_search_bench",
]

TOLERANCE = 0.01  # "as good as": within one point of accuracy of the unpruned search's best
REFERENCE = "tpe"  # the unpruned search every strategy is measured against
NO_LEARNING_AFTER = 2  # epochs before the no-learning rule may stop a trial (the sweeps' default)
TABLE_VERSION = 1
Log = Callable[[str], None]


# --------------------------------------------------------------------------- the table


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

    def configs(self) -> list[dict[str, Any]]:
        """Every configuration of the grid, in a fixed order."""
        return [dict(zip(self.axes, values, strict=True)) for values in itertools.product(*self.axes.values())]

    def curve(self, params: Mapping[str, Any]) -> Curve:
        return self.curves[config_id(params)]

    def best(self) -> Curve:
        """The configuration with the table's highest best validation accuracy."""
        return max(self.curves.values(), key=lambda c: -1.0 if c.best is None else c.best)

    def to_json(self) -> dict[str, Any]:
        head = {k: getattr(self, k) for k in ("key", "epochs", "axes", "classes", "n_eval", "setup", "ordered")}
        return {"version": TABLE_VERSION, **head, "curves": [c.to_json() for c in self.curves.values()]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Table:
        curves = [Curve.from_json(c) for c in d["curves"]]
        by_id = {config_id(c.params): c for c in curves}
        return cls(d["key"], d["epochs"], d["axes"], d["classes"], d["n_eval"], d["setup"], by_id, d.get("ordered", []))


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
    """What the tabular benchmark needs of a sweep: a val_acc objective, an unconditional space
    (every configuration exists) and one data set for all configurations."""
    where = spec.source or spec.study
    if spec.objective.metric != "val_acc" or spec.objective.resolved_direction != "maximize":
        raise StudyrunnerError(f"{where}: the search benchmark replays val_acc, maximized; the sweep's objective differs")
    if not spec.space:
        raise StudyrunnerError(f"{where}: the search benchmark needs a space to search")
    for name, p in spec.space.items():
        if p.when:
            raise StudyrunnerError(
                f"{where}: space.{name} has a when condition; the search benchmark needs an unconditional space"
            )
        if name.startswith("data."):
            raise StudyrunnerError(f"{where}: space.{name}: the search benchmark trains every configuration on the same data")


def grid_axes(spec: SweepSpec, base: TrainConfig, points: int) -> dict[str, list[Any]]:
    """Every space parameter's grid values, in the space's order."""
    if points < 2:
        raise StudyrunnerError(f"grid points must be at least 2, got {points}")
    return {name: _axis_values(p, p.kind(base, name), points) for name, p in spec.space.items()}


def _table_key(spec: SweepSpec, overrides: Mapping[str, Any], points: int, base: TrainConfig) -> str:
    """A fingerprint of what shapes the curves: the sweep's train section and space, the overrides,
    the grid, and the device and precision they ran at. The budget, sampler and pruner only shape
    the replay, so changing them keeps the table; so does a new TrainConfig field (a changed
    default is not seen: delete table.json to rebuild)."""
    setup = {
        "train": spec.train,
        "space": {name: p.model_dump(mode="json") for name, p in spec.space.items()},
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
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(table.to_json(), indent=1))
    os.replace(tmp, path)


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
    grid_points: int = 7,
    log: Log = print,
    splits: Splits | None = None,
) -> Table:
    """Train every configuration of the discretised space once, for all epochs, on one load of
    the data (``splits`` when given); the table is saved after each configuration and a later
    call trains only what is missing. A changed space, train section, override or grid starts a
    new table; the budget, sampler and pruner only shape the replay and keep it."""
    _check_space(spec)
    base = spec.base_config(dict(overrides))
    resolved = resolve_config(base)
    key = _table_key(spec, overrides, grid_points, resolved)
    table = load_table(path, key)
    if table is None:
        if path.exists():
            log(f"{path} holds another setup's table; starting afresh")
        table = Table(key, resolved.epochs, grid_axes(spec, resolved, grid_points))
    table.ordered = [name for name, p in spec.space.items() if p.choices is None]
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
        log(f"[{i}/{len(todo)}] {_params_text(params)}: best val_acc {best}, {curve.seconds:.0f} s{end}")
    return table


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


# --------------------------------------------------------------------------- the strategies

Strategy = tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner, int]  # (sampler, pruner, no-learning after)


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed)


def _median() -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)


STRATEGIES: dict[str, Callable[[int], Strategy]] = {
    "random": lambda seed: (optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner(), 0),
    "tpe": lambda seed: (_tpe(seed), optuna.pruners.NopPruner(), 0),
    "tpe+median": lambda seed: (_tpe(seed), _median(), 0),
    "tpe+hyperband": lambda seed: (_tpe(seed), optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3), 0),
    "tpe+sha": lambda seed: (_tpe(seed), optuna.pruners.SuccessiveHalvingPruner(), 0),
    "tpe+no-learning": lambda seed: (_tpe(seed), optuna.pruners.NopPruner(), NO_LEARNING_AFTER),
    "tpe+median+no-learning": lambda seed: (_tpe(seed), _median(), NO_LEARNING_AFTER),
}
UNPRUNED = ("random", "tpe")  # every trial they start runs to its end


@dataclass(frozen=True)
class TrialLog:
    """One replayed trial: what it sampled, how it ended and what it cost."""

    params: dict[str, Any]
    state: str  # COMPLETE | PRUNED
    epochs: int  # epochs it trained
    seconds: float  # the table's seconds of those epochs
    value: float | None  # a complete trial's best val_acc
    reason: str = ""  # why it was pruned
    unpruned: float | None = None  # the value it would have had if nothing had stopped it (None: it diverged)


@dataclass
class Replay:
    """One strategy's study at one sampler seed."""

    strategy: str
    seed: int
    trials: list[TrialLog]

    @property
    def epochs(self) -> int:
        return sum(t.epochs for t in self.trials)

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.trials)

    @property
    def best(self) -> float | None:
        values = [t.value for t in self.trials if t.value is not None]
        return max(values) if values else None

    def anytime(self) -> list[tuple[int, float, float | None]]:
        """After each trial: (epochs so far, seconds so far, best value of a complete trial so far)."""
        out: list[tuple[int, float, float | None]] = []
        epochs, seconds, best = 0, 0.0, None
        for t in self.trials:
            epochs, seconds = epochs + t.epochs, seconds + t.seconds
            if t.value is not None and (best is None or t.value > best):
                best = t.value
            out.append((epochs, seconds, best))
        return out


def _ask(trial: optuna.Trial, table: Table) -> dict[str, Any]:
    """The trial's configuration: choices as categoricals; discretised ranges by index, so TPE models their order."""
    params: dict[str, Any] = {}
    for name, values in table.axes.items():
        if name in table.ordered:
            params[name] = values[trial.suggest_int(f"{name}_index", 0, len(values) - 1)]
        else:
            labels = [json.dumps(v) if isinstance(v, (list, dict)) else v for v in values]
            params[name] = values[labels.index(trial.suggest_categorical(name, labels))]
    return params


def _play(trial: optuna.Trial, curve: Curve, table: Table, after: int) -> TrialLog:
    """Replay ``curve`` as the objective runs a trial: report each epoch, stop on the no-learning
    rule or the pruner; a diverged curve's last epoch is paid for but never reported (the engine
    ends the run before the objective sees it)."""
    diverged = curve.diverged(table.epochs)
    shown = curve.points[:-1] if diverged and curve.points else curve.points
    seen: list[Point] = []
    for point in shown:
        seen.append(point)
        if point.val_acc is not None:
            trial.report(point.val_acc, point.epoch)
        reason = no_learning(seen, table.classes, table.n_eval, after)
        if not reason and point.val_acc is not None and trial.should_prune():
            reason = f"pruned after epoch {point.epoch} (val_acc {point.val_acc:.4f})"
        if reason:
            unpruned = None if diverged else curve.best
            return TrialLog(curve.params, "PRUNED", len(seen), sum(p.seconds for p in seen), None, reason, unpruned)
    if diverged or curve.best is None:
        why = curve.reason or f"diverged after epoch {len(curve.points)}"
        return TrialLog(curve.params, "PRUNED", len(curve.points), curve.seconds, None, why)
    return TrialLog(curve.params, "COMPLETE", len(curve.points), curve.seconds, curve.best, "", curve.best)


def replay(table: Table, strategy: str, seed: int, n_trials: int) -> Replay:
    """``n_trials`` trials of ``strategy`` on ``table`` in an in-memory study (ask/tell)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # hundreds of studies: no line per study and trial
    with warnings.catch_warnings():  # some pruners and sampler options are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler, pruner, after = STRATEGIES[strategy](seed)
        # a fixed name: Hyperband assigns trials to brackets by a hash of the study name
        study = optuna.create_study(study_name=f"{strategy}-{seed}", direction="maximize", sampler=sampler, pruner=pruner)
        trials: list[TrialLog] = []
        for _ in range(n_trials):
            trial = study.ask()
            log = _play(trial, table.curve(_ask(trial, table)), table, after)
            if log.value is None:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, log.value)
            trials.append(log)
    return Replay(strategy, seed, trials)


def run_strategies(
    table: Table, n_trials: int, seeds: Iterable[int], names: Iterable[str] = tuple(STRATEGIES)
) -> dict[str, list[Replay]]:
    """Every strategy named, replayed once per sampler seed."""
    seeds = list(seeds)
    return {name: [replay(table, name, s, n_trials) for s in seeds] for name in names}


# --------------------------------------------------------------------------- the figures


def to_target(run: Replay, target: float) -> tuple[int, float, bool]:
    """(epochs, seconds) the study had spent when a complete trial first reached ``target``, and
    True; or its whole cost and False when none did."""
    for epochs, seconds, best in run.anytime():
        if best is not None and best >= target - 1e-12:
            return epochs, seconds, True
    return run.epochs, run.seconds, False


def _stopped_winners(run: Replay, target: float) -> int:
    """Trials a pruner or the rule stopped that would have reached ``target`` had they run to the end."""
    return sum(t.state == "PRUNED" and t.unpruned is not None and t.unpruned >= target - 1e-12 for t in run.trials)


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class Summary:
    """One strategy over its seeds: mean and sd of each figure."""

    name: str
    best: tuple[float, float]  # final best value (nan-free: a seed without a complete trial counts 0)
    epochs: tuple[float, float]  # total epochs trained
    seconds: tuple[float, float]  # total seconds of those epochs
    to_target: tuple[float, float]  # epochs until within TOLERANCE of the reference (the total where never)
    seconds_to_target: tuple[float, float]
    reached: int  # seeds that reached the target
    seeds: int
    share: float  # mean epochs to target / the reference's mean total epochs
    pruned: float  # mean trials pruned per study
    lost: int = 0  # seeds that missed the target although they stopped a trial that would have reached it
    to_target_seeds: tuple[float, ...] = ()  # epochs to target per seed, in seed order (for paired comparisons)
    cut_short: int = 0  # trials, over all seeds, stopped although they would have reached the target


def summarise(
    replays: Mapping[str, Sequence[Replay]], reference: str = REFERENCE, tolerance: float = TOLERANCE
) -> tuple[float, list[Summary]]:
    """The reference value (the mean over seeds of ``reference``'s final best) and each strategy's figures."""
    ref = statistics.fmean(r.best or 0.0 for r in replays[reference])
    ref_epochs = statistics.fmean(r.epochs for r in replays[reference])
    return ref, [_summary(name, runs, ref - tolerance, ref_epochs) for name, runs in replays.items()]


def _summary(name: str, runs: Sequence[Replay], target: float, ref_epochs: float) -> Summary:
    hits = [to_target(r, target) for r in runs]
    to_epochs = _mean_sd([float(h[0]) for h in hits])
    return Summary(
        name=name,
        best=_mean_sd([r.best or 0.0 for r in runs]),
        epochs=_mean_sd([float(r.epochs) for r in runs]),
        seconds=_mean_sd([r.seconds for r in runs]),
        to_target=to_epochs,
        seconds_to_target=_mean_sd([h[1] for h in hits]),
        reached=sum(h[2] for h in hits),
        seeds=len(runs),
        share=to_epochs[0] / ref_epochs,
        pruned=statistics.fmean(sum(t.state == "PRUNED" for t in r.trials) for r in runs),
        lost=sum(not h[2] and _stopped_winners(r, target) > 0 for r, h in zip(runs, hits, strict=True)),
        to_target_seeds=tuple(float(h[0]) for h in hits),
        cut_short=sum(_stopped_winners(r, target) for r in runs),
    )


def figures(reference: float, summaries: Sequence[Summary], table: Table) -> dict[str, float]:
    """The benchmark's numbers as one flat mapping (``strategy.figure`` keys)."""
    best = table.best()
    out = {"reference_best": reference, "target": reference - TOLERANCE, "table_best": best.best or 0.0}
    out["table_configs"] = float(len(table.curves))
    out["table_epochs"] = float(sum(len(c.points) for c in table.curves.values()))
    out["table_seconds"] = sum(c.seconds for c in table.curves.values())
    for s in summaries:
        for what in ("best", "epochs", "seconds", "to_target", "seconds_to_target"):
            mean, sd = getattr(s, what)
            out[f"{s.name}.{what}_mean"], out[f"{s.name}.{what}_sd"] = mean, sd
        out[f"{s.name}.share"], out[f"{s.name}.reached"], out[f"{s.name}.pruned"] = s.share, float(s.reached), s.pruned
        out[f"{s.name}.cut_short"] = float(s.cut_short)
    return out


def anytime_info(runs: Sequence[Replay]) -> tuple[list[float], list[float]]:
    """The mean over seeds of the best complete value against cumulative epochs (0, 1, ... the
    largest total): a study that has finished keeps its final best; where some seed has no
    complete trial yet the mean is undefined (nan)."""
    until = max(r.epochs for r in runs)
    steps = [r.anytime() for r in runs]
    xs, ys = list(range(until + 1)), []
    for x in xs:
        bests = [next((b for e, _, b in reversed(s) if e <= x and b is not None), None) for s in steps]
        ys.append(math.nan if any(b is None for b in bests) else statistics.fmean(b for b in bests if b is not None))
    return [float(x) for x in xs], ys


# --------------------------------------------------------------------------- the report


def _pm(v: tuple[float, float], scale: float = 1.0, digits: int = 1) -> str:
    return f"{scale * v[0]:.{digits}f} ± {scale * v[1]:.{digits}f}"


def summary_table(summaries: Sequence[Summary]) -> str:
    """The per-strategy figures as a markdown table (mean ± sd over seeds)."""
    head = [
        "strategy", "final best (%)", "epochs", "seconds", "epochs to target",
        "share of unpruned TPE's epochs", "seeds at target", "trials pruned",
    ]  # fmt: skip
    rows = [
        [
            f"`{s.name}`",
            _pm(s.best, 100),
            _pm(s.epochs),
            _pm(s.seconds, digits=0),
            _pm(s.to_target) + ("" if s.reached == s.seeds else " *"),
            f"{100 * s.share:.0f}%",
            f"{s.reached}/{s.seeds}",
            f"{s.pruned:.1f}",
        ]
        for s in summaries
    ]
    return md_table(head, rows)


def _setup_md(spec: SweepSpec, table: Table, sweep_path: str, n_trials: int, seeds: int) -> list[str]:
    s = table.setup
    grid = " x ".join(f"{k} {{{', '.join(_value_text(v) for v in vals)}}}" for k, vals in table.axes.items())
    train_s = sum(c.seconds for c in table.curves.values())
    points = {len(table.axes[name]) for name, p in spec.space.items() if p.choices is None}
    return [
        "## Setup",
        "",
        f"- Sweep `{sweep_path}` (study `{spec.study}`): {grid} = {len(table.curves)} configurations; numeric "
        f"ranges discretised to {', '.join(map(str, sorted(points))) or 'no'} points (log-spaced for log ranges).",
        f"- Every configuration trained once for {table.epochs} epochs (training seed {s.get('training_seed')}) on "
        f"{s.get('train_images')} training and {s.get('val_images')} validation images; model `{s.get('model')}`, "
        f"batch {s.get('batch_size')}, {s.get('device')}, {s.get('precision')}. Building the table took "
        f"{train_s / 60:.1f} minutes of training ({sum(len(c.points) for c in table.curves.values())} epochs).",
        f"- Machine: {s.get('machine') or machine()}.",
        f"- Replay: in-memory Optuna {optuna.__version__} studies of {n_trials} trials (the sweep's budget.n_trials), "
        f"sampler seeds 0..{seeds - 1}; discretised ranges are suggested as grid indices (`suggest_int`) so TPE models "
        "their order, choices as categoricals. A trial reports each epoch's val_acc, is stopped by the no-learning rule "
        f"(from epoch {NO_LEARNING_AFTER}) where the strategy uses it, then asks the pruner; its value is its best "
        "val_acc. A diverged curve ends pruned, paid up to the epoch that diverged.",
        "- Strategies: `random` and `tpe` prune nothing (the unpruned references); `tpe+median`: MedianPruner "
        "(4 startup trials, 2 warm-up epochs); `tpe+hyperband`: HyperbandPruner (min_resource 1, reduction factor 3); "
        "`tpe+sha`: SuccessiveHalvingPruner (Optuna's defaults); `+no-learning`: the no-learning rule "
        "(`rules.no_learning`).",
        "",
    ]


def _value_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _cell(curve: Curve | None, table: Table) -> str:
    if curve is None or curve.best is None:
        return "-" if curve is None else f"div. ep {len(curve.points)}"
    text = f"{100 * curve.best:.1f}"
    if curve.best <= chance_band(table.classes, table.n_eval):
        text += " ·"
    return text + (f" (div. ep {len(curve.points)})" if curve.diverged(table.epochs) else "")


def _table_md(table: Table) -> list[str]:
    """The table as a grid: one column per value of the longest axis, one row per combination of the others."""
    last = max(table.axes, key=lambda n: len(table.axes[n]))
    rest = [n for n in table.axes if n != last]
    rows = []
    for combo in itertools.product(*(table.axes[n] for n in rest)):
        fixed = dict(zip(rest, combo, strict=True))
        cells = [_cell(table.curves.get(config_id({**fixed, last: v})), table) for v in table.axes[last]]
        rows.append([", ".join(_value_text(v) for v in combo) or "-", *cells])
    band = chance_band(table.classes, table.n_eval)
    return [
        "## The table: best val_acc (%) of every configuration",
        "",
        md_table([", ".join(rest) or "-", *[f"{last}={_value_text(v)}" for v in table.axes[last]]], rows),
        "",
        f"`·` = within chance ({100 * band:.1f}% for {table.classes} classes on {table.n_eval} images); "
        "`div. ep N` = diverged at epoch N.",
        "",
    ]


def _table_findings(table: Table) -> str:
    best = table.best()
    band = chance_band(table.classes, table.n_eval)
    stuck = sum(1 for c in table.curves.values() if c.best is not None and c.best <= band and not c.diverged(table.epochs))
    diverged = sum(1 for c in table.curves.values() if c.diverged(table.epochs))
    return (
        f"The table's best configuration is {_params_text(best.params)} at {100 * (best.best or 0):.1f}%. "
        f"{stuck} of the {len(table.curves)} configurations never left chance level and {diverged} diverged: "
        "their epochs are what a stopping rule or a pruner can save."
    )


def _strategy_findings(reference: float, summaries: Sequence[Summary], table: Table) -> str:
    by = {s.name: s for s in summaries}
    full = sorted((s for s in summaries if s.reached == s.seeds), key=lambda s: s.share)
    missed = [
        f"`{s.name}` ({s.seeds - s.reached} of {s.seeds} seeds: {s.lost} stopped such a configuration early, "
        f"{s.seeds - s.reached - s.lost} never drew one)"
        for s in summaries
        if s.reached < s.seeds
    ]
    worse = [f"`{s.name}` ({100 * s.best[0]:.1f}%)" for s in summaries if s.best[0] < reference - TOLERANCE]
    ref_epochs = by[REFERENCE].epochs[0] if REFERENCE in by else 0.0
    text = (
        f"Unpruned TPE ends at {100 * reference:.1f}% on average ({100 * ((table.best().best or 0) - reference):.1f} "
        f"points below the table's best), so the target is {100 * (reference - TOLERANCE):.1f}%. "
        + _winners(table, reference - TOLERANCE)
    )
    text += _fastest(full, ref_epochs) + _cheapest(summaries, reference, ref_epochs)
    if missed:
        text += f"Seeds that never reached it (their whole cost counts, marked *): {', '.join(missed)}. "
    cut = [f"`{s.name}` ({s.cut_short})" for s in summaries if s.cut_short]
    text += (
        f"Trials stopped although they would have reached the target, over all seeds: {', '.join(cut)}. "
        if cut
        else "No stop cut short a trial that would have reached the target. "
    )
    if worse:
        text += f"Final best more than {100 * TOLERANCE:.0f} point below the reference: {', '.join(worse)}."
    return text.strip()


def _fastest(full: Sequence[Summary], ref_epochs: float) -> str:
    """The strategy with the smallest share, and which others the seeds cannot tell from it. The
    comparison is paired by seed (at one seed the strategies share their first draws): a strategy is
    within noise when its mean extra epochs are under two standard errors of those differences."""
    if not full:
        return ""
    w = full[0]
    close = [s.name for s in full[1:] if not _settled([b - a for a, b in zip(w.to_target_seeds, s.to_target_seeds, strict=True)])]
    text = (
        f"`{w.name}` reached it in every seed with the smallest share: {w.to_target[0]:.1f} ± {w.to_target[1]:.1f} "
        f"epochs, {100 * w.share:.0f}% of unpruned TPE's {ref_epochs:.0f}. In order after it: "
        + ", ".join(f"`{s.name}` {100 * s.share:.0f}%" for s in full[1:])
        + ". "
    )
    if close:
        text += (
            f"Paired by seed, {', '.join(f'`{n}`' for n in close)} {'is' if len(close) == 1 else 'are'} within two "
            f"standard errors of it: that part of the order is not settled by {w.seeds} seeds. "
        )
    return text


def _settled(diffs: Sequence[float]) -> bool:
    """True when the mean of the paired differences is more than two standard errors above 0."""
    if len(diffs) < 2:
        return False
    mean, sd = _mean_sd(diffs)
    return mean > 2 * sd / math.sqrt(len(diffs))


def _cheapest(summaries: Sequence[Summary], reference: float, ref_epochs: float) -> str:
    """The strategy whose whole study cost the fewest epochs while its final best stayed within the tolerance."""
    good = [s for s in summaries if s.best[0] >= reference - TOLERANCE]
    if not good or not ref_epochs:
        return ""
    c = min(good, key=lambda s: s.epochs[0])
    return (
        f"Counting whole studies, the strategy that spent the fewest epochs with a final best within "
        f"{100 * TOLERANCE:.0f} point of the reference was `{c.name}`: {c.epochs[0]:.1f} ± {c.epochs[1]:.1f} epochs, "
        f"{100 * c.epochs[0] / ref_epochs:.0f}% of unpruned TPE's, final best {100 * c.best[0]:.1f}%. "
    )


def _winners(table: Table, target: float) -> str:
    """Which configurations reach the target: with few, epochs to target measure how soon a strategy finds one."""
    hits = [c for c in table.curves.values() if c.best is not None and c.best >= target - 1e-12 and not c.diverged(table.epochs)]
    if len(hits) > 3:
        return f"{len(hits)} of the {len(table.curves)} configurations reach it. "
    named = "; ".join(f"{_params_text(c.params)}" for c in hits)
    misses = [c for c in table.curves.values() if c.best is not None and c.best < target - 1e-12]
    near = max(misses, key=lambda c: c.best or 0.0, default=None)
    nearest = (
        f" The nearest miss, {_params_text(near.params)} at {100 * (near.best or 0):.1f}%, falls "
        f"{100 * (target - (near.best or 0)):.1f} points short."
        if near
        else ""
    )
    return (
        f"Only {len(hits)} of the {len(table.curves)} configurations {'reaches' if len(hits) == 1 else 'reach'} it "
        f"({named}), so epochs to target measure how soon a strategy draws "
        f"{'it' if len(hits) == 1 else 'one of them'} and lets it finish.{nearest} "
    )


def _caveats(reference: float, table: Table, n_trials: int) -> str:
    se = math.sqrt(reference * (1 - reference) / max(table.n_eval, 1))
    text = (
        f"What it cannot show: each configuration was trained once, with one training seed, and an accuracy near "
        f"{100 * reference:.0f}% measured on {table.n_eval} images has a binomial standard error of "
        f"{100 * se:.1f} points, so the 1-point target lies within the noise of a single curve. Replay takes that "
        "noise out of the comparison between strategies (they all see the same curves), not out of which "
        f"configuration counts as best. {n_trials} trials on a {len(table.curves)}-point grid: samplers may draw a "
        "configuration twice, and pay for it again, as a study would retrain it."
    )
    if n_trials > 10:
        text += (
            " TPE's first 10 trials (Optuna's default n_startup_trials) are random search's own draws at the same "
            "seed, so at one seed every strategy samples the same first 10 configurations; the strategies differ in "
            f"what those trials cost and in the last {n_trials - 10}."
        )
    seconds = "Seconds are the table's wall time per epoch on this machine, shared with other work while it ran."
    return f"{text} {seconds}"


def render_report(
    spec: SweepSpec,
    sweep_path: str,
    table: Table,
    reference: float,
    summaries: Sequence[Summary],
    n_trials: int,
    seeds: int,
    figure: str,
) -> str:
    """The benchmark's README: setup, per-strategy figures, the anytime figure, the table, what it
    shows and the command that reproduces it."""
    lines = [
        f"# {spec.study}: time to quality of search strategies (tabular benchmark)",
        "",
        "How little training does each search strategy (sampler, pruner, stopping rule) need to find a "
        "configuration as good as the unpruned search finds? Every configuration of the discretised space is "
        "trained once; each strategy then replays that table with real Optuna samplers and pruners and pays for "
        "the epochs its trials consume.",
        "",
        *_setup_md(spec, table, sweep_path, n_trials, seeds),
        "## Results",
        "",
        f"Reference: unpruned TPE's final best, mean over seeds, {100 * reference:.1f}%; target "
        f"{100 * (reference - TOLERANCE):.1f}% (within {100 * TOLERANCE:.0f} point). Mean ± sd over {seeds} sampler seeds; "
        "epochs to target count the whole study's epochs until a complete trial first reaches the target "
        "(* = some seeds never did: their total counts).",
        "",
        summary_table(summaries),
        "",
        f"![best value against epochs trained, mean over seeds]({figure})",
        "",
        *_table_md(table),
        "## What it shows",
        "",
        _table_findings(table),
        "",
        _strategy_findings(reference, summaries, table),
        "",
        _caveats(reference, table, n_trials),
        "",
        "## Reproduce",
        "",
        "```",
        f"studyrunner bench --search {sweep_path}",
        "```",
        "",
    ]
    return "\n".join(lines)


def _save_figure(replays: Mapping[str, Sequence[Replay]], target: float, path: Path) -> None:
    info = {name: anytime_info(runs) for name, runs in replays.items()}
    fig = plots.anytime_figure(info, target, "best complete trial vs epochs trained (mean over seeds)", dashed=UNPRUNED)
    try:
        fig.savefig(path, dpi=110)
    finally:
        plots.close(fig)


def run_search_bench(
    sweep_path: str | Path,
    overrides: dict[str, Any],
    data_dir: str | None,
    out_dir: Path,
    seeds: int = 5,
    grid_points: int = 7,
    log: Log = print,
) -> dict[str, float]:
    """Build (or resume) the table of ``sweep_path``'s discretised space, replay every strategy
    over ``seeds`` sampler seeds, and write ``out_dir``/README.md, anytime.png and table.json."""
    if seeds < 1:
        raise StudyrunnerError(f"seeds must be at least 1, got {seeds}")
    spec = load_sweep(sweep_path)
    table = build_table(spec, overrides, data_dir, out_dir / "table.json", grid_points, log)
    replays = run_strategies(table, spec.budget.n_trials, range(seeds))
    reference, summaries = summarise(replays)
    log(summary_table(summaries))
    _save_figure(replays, reference - TOLERANCE, out_dir / "anytime.png")
    report = render_report(spec, str(sweep_path), table, reference, summaries, spec.budget.n_trials, seeds, "anytime.png")
    (out_dir / "README.md").write_text(report)
    log(f"wrote {out_dir / 'README.md'}, {out_dir / 'anytime.png'} and {out_dir / 'table.json'}")
    return figures(reference, summaries, table)

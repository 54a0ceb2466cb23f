"""The time-to-quality benchmark of search strategies, part 2: the replay and its figures.

The strategies replay the table (:mod:`studyrunner.bench.search_table`) with real Optuna samplers
and pruners over several sampler seeds: a trial looks up its curve, reports it epoch by epoch
exactly as the objective does, and pays for the epochs it consumed. Replay takes seconds, and
every strategy sees the same curves, so the comparison holds no training noise between strategies.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna

from studyrunner.bench.search_table import Curve, Point, Table
from studyrunner.search.space import holds
from studyrunner.search.spec import choice_label
from studyrunner.search.stopping import no_learning

__all__ = [
    "TrialLog",
    "Replay",
    "Summary",
    "STRATEGIES",
    "REFERENCE",
    "TOLERANCE",
    "replay",
    "run_strategies",
    "to_target",
    "summarise",
    "figures",
    "anytime_info",
]

TOLERANCE = 0.01  # "as good as": within one point of accuracy of the unpruned search's best
REFERENCE = "tpe"  # the unpruned search every strategy is measured against
NO_LEARNING_AFTER = 2  # epochs before the no-learning rule may stop a trial (the sweeps' default)

Strategy = tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner, int]  # (sampler, pruner, no-learning after)


def _tpe(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed)


def _gp(seed: int) -> optuna.samplers.BaseSampler:
    """Optuna's Gaussian-process sampler (marked experimental by Optuna; its default 10 startup trials)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.GPSampler(seed=seed)


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
    "gp": lambda seed: (_gp(seed), optuna.pruners.NopPruner(), 0),
    "gp+no-learning": lambda seed: (_gp(seed), optuna.pruners.NopPruner(), NO_LEARNING_AFTER),
    "gp+sha+no-learning": lambda seed: (_gp(seed), optuna.pruners.SuccessiveHalvingPruner(), NO_LEARNING_AFTER),
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
        if not holds(table.when.get(name), params):  # a conditional parameter this configuration lacks
            continue
        if name in table.ordered:
            params[name] = values[trial.suggest_int(f"{name}_index", 0, len(values) - 1)]
        else:
            labels = [choice_label(v) for v in values]
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
    out["table_configs"] = float(len(table.in_grid()))
    out["table_epochs"] = float(sum(len(c.points) for c in table.in_grid()))
    out["table_seconds"] = sum(c.seconds for c in table.in_grid())
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

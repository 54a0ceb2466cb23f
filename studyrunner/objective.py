"""The objective: one Optuna trial = sample the space, build and resolve the config, train
``repeats`` seeds with the engine, report epochs to the pruner, track the run.

Works with any ``optuna.Trial``, ``optuna.trial.FixedTrial`` included; ``tracker`` may be None.
What happened is recorded in the trial's user attribute ``outcome``; ``states`` turns that and
Optuna's state into the trial's state.
"""

from __future__ import annotations

import math
import os
import signal
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from .config import DataConfig, TrainConfig, apply_overrides
from .curves import write_history
from .data import Progress, Splits, load_splits
from .engine import EpochRecord, FitResult, fit, resolve_config
from .errors import StudyrunnerError, Terminated, signalled
from .rules import no_learning
from .space import suggest
from .spec import Objective as Target
from .spec import SweepSpec, parse_constraint
from .states import OPTUNA_FINISHED, best_of, state_of

if TYPE_CHECKING:
    from .tracking import Tracker

__all__ = ["StudyEvents", "DataSource", "Objective", "SurplusTrial", "run_value", "best_checkpoint", "failure_reason"]


class StudyEvents:
    """Hooks for live progress; the CLI overrides them, the defaults do nothing."""

    def trial_started(self, number: int, params: dict[str, Any]) -> None: ...
    def epoch_done(self, number: int, record: EpochRecord, epochs: int) -> None: ...
    def batch_done(self, done: int, total: int) -> None: ...
    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None: ...
    def data_progress(self, what: str, done: int, total: int) -> None: ...


class DataSource:
    """Loads each distinct data configuration once per process and keeps it for later trials."""

    def __init__(self, data_dir: str | None, progress: Progress = None) -> None:
        self.data_dir = data_dir
        self.progress = progress
        self._cache: dict[DataConfig, Splits] = {}

    def __call__(self, cfg: DataConfig) -> Splits:
        if cfg not in self._cache:
            self._cache[cfg] = load_splits(cfg, self.data_dir, self.progress)
        return self._cache[cfg]


class SurplusTrial(StudyrunnerError):
    """Raised at the start of a trial that would take a study past its n_trials (parallel workers)."""


def run_value(result: FitResult, metric: str, direction: str) -> float | None:
    """A run's objective value: the best epoch's value for train/val metrics, the test metric
    (of the best-validation weights) for test metrics; the parameter count; the mean seconds per epoch."""
    if metric == "num_params":
        return float(result.num_params)
    if metric == "epoch_seconds":
        return statistics.fmean(r.epoch_seconds for r in result.history) if result.history else None
    if metric.startswith("test_"):
        value: float | None = getattr(result, metric)
        return value
    vals: list[float] = [v for v in (getattr(r, metric) for r in result.history) if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return max(vals) if direction == "maximize" else min(vals)


def _intermediate(record: EpochRecord, metric: str) -> float | None:
    v: float | None = getattr(record, metric.replace("test_", "val_"))
    return v if v is not None and math.isfinite(v) else None


@dataclass
class _Trial:
    """One trial in progress: its outcome so far and what the first seed has trained."""

    number: int
    cfg: TrainConfig
    run_id: str | None = None
    outcome: str = "failed"  # completed | pruned | diverged | failed | interrupted
    reason: str = ""
    values: list[float] = field(default_factory=list)  # the first objective's value per seed
    others: list[list[float]] = field(default_factory=list)  # further objectives' values per seed
    results: list[FitResult] = field(default_factory=list)
    shadow: optuna.Trial | None = None  # multi-objective: the pruning study's trial that mirrors this one
    records: list[EpochRecord] = field(default_factory=list)  # first seed's epochs seen so far (pruned trials too)
    retry: bool = False  # a retry of an earlier attempt: continue from its saved state

    @property
    def history(self) -> list[EpochRecord]:
        return self.results[0].history if self.results else self.records


class Objective:
    """``objective(trial) -> value``: sample, build the config, train ``repeats`` seeds, track."""

    def __init__(
        self,
        spec: SweepSpec,
        base: TrainConfig,
        data: DataSource,
        tracker: Tracker | None = None,
        events: StudyEvents | None = None,
        target: int | None = None,
        storage_url: str = "",
        pruning: optuna.Study | None = None,
    ) -> None:
        self.spec, self.base, self.data, self.tracker, self.target = spec, base, data, tracker, target
        # multi-objective studies cannot prune (Optuna refuses trial.report there): each trial is mirrored by a
        # trial of this single-objective study of the first objective, whose pruner decides
        self.pruning = pruning
        self.events = events or StudyEvents()
        self.storage_url = storage_url  # where model.init=study:NAME finds the earlier study
        self.direction = spec.objective.resolved_direction
        self.timings = {"fit_s": 0.0, "epoch_logging_s": 0.0}  # seconds spent training and logging epochs, all trials

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        if self.target is not None and _surplus(trial, self.target):
            trial.set_user_attr("outcome", "surplus")  # another worker took the last slot first
            raise SurplusTrial(f"the study already holds or runs {self.target} trials")
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        try:
            sampled = suggest(trial, self.spec, self.base)
            run = _Trial(getattr(trial, "number", 0), self._trial_config(trial, sampled))
            run.retry = int(trial.user_attrs.get("origin", run.number)) != run.number if hasattr(trial, "user_attrs") else False
            splits = self.data(run.cfg.data)
        except Exception as exc:  # before training: the reason is recorded all the same (never a FAIL without one)
            if "fail_reason" not in getattr(trial, "user_attrs", {}):
                trial.set_user_attr("fail_reason", failure_reason(exc))
            if isinstance(exc, StudyrunnerError):  # bad data or config: the same on every retry
                trial.set_user_attr("invalid", True)
            trial.set_user_attr("outcome", "failed")
            raise
        self.events.trial_started(run.number, sampled)
        if self.tracker is not None:
            tags = {
                "seed": str(run.cfg.seed),
                "device": run.cfg.device,
                "precision": run.cfg.precision,
                "repeats": str(self.spec.repeats),
            }
            run.run_id = self.tracker.start_trial(run.number, run.cfg, sampled, tags, splits.classes)
            trial.set_user_attr("mlflow_run_id", run.run_id)
        try:
            return self._train(trial, run, splits)
        except optuna.TrialPruned as exc:
            run.outcome = "diverged" if run.outcome == "diverged" else "pruned"
            run.reason = run.reason or str(exc) or "pruned"
            raise
        except KeyboardInterrupt as exc:
            run.outcome, run.reason = (
                "interrupted",
                "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)",
            )
            raise
        except BaseException as exc:  # recorded, then re-raised for Optuna to mark FAIL
            sig = signalled()
            if sig is not None:  # Ctrl-C/SIGTERM surfaced as another error (inside torch.save, a driver): an interruption
                run.outcome = "interrupted"
                run.reason = "terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted (Ctrl-C)"
                raise (Terminated() if sig == signal.SIGTERM else KeyboardInterrupt()) from exc
            run.outcome, run.reason = "failed", failure_reason(exc)
            raise
        finally:
            self._record(trial, run)

    def _trial_config(self, trial: optuna.Trial, sampled: dict[str, Any]) -> TrainConfig:
        """The trial's resolved config: sampled values, its checkpoint folder, study:NAME inits.
        An invalid combination fails the trial with the reason and is not retried."""
        number = getattr(trial, "number", 0)
        origin = int(getattr(trial, "user_attrs", {}).get("origin", number))  # a retry continues its first attempt's folder
        if origin == number:
            trial.set_user_attr("origin", number)
        try:
            cfg = apply_overrides(self.base, sampled)
            over: dict[str, Any] = {}
            if not cfg.out_dir:
                over["out_dir"] = str(Path("runs/checkpoints").resolve() / self.spec.study / f"trial-{origin}")
            if cfg.model.init.startswith("study:"):
                over["model.init"] = best_checkpoint(cfg.model.init.removeprefix("study:"), self.storage_url)
            cfg = resolve_config(apply_overrides(cfg, over))
        except StudyrunnerError as exc:  # e.g. a sampled optim.lr below a fixed sched.min_lr: the same every time
            trial.set_user_attr("fail_reason", f"invalid configuration: {exc}"[:2000])
            trial.set_user_attr("invalid", True)
            raise
        trial.set_user_attr("checkpoint", str(Path(cfg.out_dir) / "best.pt"))
        trial.set_user_attr("out_dir", str(cfg.out_dir))  # history.json is there
        return cfg

    def _train(self, trial: optuna.Trial, run: _Trial, splits: Splits) -> float | list[float]:
        if self.pruning is not None:
            with warnings.catch_warnings():  # Optuna suggests heartbeats with optimize(); the mirror is driven by hand
                warnings.simplefilter("ignore", UserWarning)
                run.shadow = self.pruning.ask()
        for r in range(self.spec.repeats):
            start = time.perf_counter()
            cfg = apply_overrides(run.cfg, {"seed": run.cfg.seed + r})
            n_eval = len(splits.val) if splits.val is not None else len(splits.train)
            on_epoch = self._on_epoch(trial, run, r, len(splits.classes), n_eval)
            try:
                result = fit(cfg, splits, on_epoch, self.events.batch_done, resume=run.retry)
            finally:  # pruned runs end in an exception: their training time counts all the same
                self.timings["fit_s"] += time.perf_counter() - start
            run.results.append(result)
            if result.outcome == "diverged":
                run.outcome, run.reason = "diverged", result.reason
                raise optuna.TrialPruned(result.reason)
            values = [run_value(result, o.metric, o.resolved_direction) for o in self.spec.targets]
            missing = [o.metric for o, v in zip(self.spec.targets, values, strict=True) if v is None]
            if missing:
                raise StudyrunnerError(f"objective metric {', '.join(missing)} was never measured")
            run.values.append(values[0])  # type: ignore[arg-type]
            run.others.append(values[1:])  # type: ignore[arg-type]
        run.outcome = "completed"
        means = [statistics.fmean(run.values)] + [statistics.fmean(col) for col in zip(*run.others, strict=True)]
        self._constrain(trial, means, run.results[0])
        return means if len(means) > 1 else means[0]

    def _constrain(self, trial: optuna.Trial, means: list[float], first: FitResult) -> None:
        """Each constraint as ``value - bound`` (<= 0 is feasible), for the sampler's constraints_func."""
        if not self.spec.constraints:
            return
        measured: dict[str, float] = {o.metric: v for o, v in zip(self.spec.targets, means, strict=True)}
        out = []
        for text in self.spec.constraints:
            metric, op, bound = parse_constraint(text)
            value: float | None = measured.get(metric)
            if value is None:
                value = run_value(first, metric, Target(metric=metric).resolved_direction)  # type: ignore[arg-type]
            v = float("inf") if value is None else value
            out.append(v - bound if op == "<=" else bound - v)
            trial.set_constraint(text, out[-1])  # the sampler reads it (<= 0: feasible)
        trial.set_user_attr("constraints", out)

    def _on_epoch(
        self, trial: optuna.Trial, run: _Trial, repeat: int, classes: int, n_eval: int
    ) -> Callable[[EpochRecord], None]:
        metric = self.spec.objective.metric
        after = self.spec.pruner.no_learning_epochs

        def on_epoch(record: EpochRecord) -> None:
            if run.run_id and self.tracker:
                start = time.perf_counter()
                self.tracker.log_epoch(run.run_id, record, prefix="" if repeat == 0 else f"seed{repeat}_")
                self.timings["epoch_logging_s"] += time.perf_counter() - start
            self.events.epoch_done(run.number, record, run.cfg.epochs)
            if repeat:
                return
            run.records.append(record)
            value = _intermediate(record, metric)
            # multi-objective: the mirrored single-objective trial judges (none without a pruner)
            judge = run.shadow if len(self.spec.targets) > 1 else trial
            if value is not None and judge is not None:  # the first seed drives pruning
                judge.report(value, record.epoch)
            stuck = no_learning(run.records, classes, n_eval, after)
            if stuck:  # hopeless whatever the pruner's warm-up
                raise optuna.TrialPruned(stuck)
            if value is not None and judge is not None and judge.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record.epoch} ({metric} {value:.4f})")

        return on_epoch

    def _settle(self, run: _Trial) -> None:
        """The pruning study's mirror told; a finished trial's state files removed (nothing to resume)."""
        _settle_shadow(self.pruning, run)
        if run.outcome in ("completed", "pruned", "diverged") and run.cfg.out_dir:
            for saved in Path(run.cfg.out_dir).glob("state-seed*.pt"):
                saved.unlink(missing_ok=True)

    def _record(self, trial: optuna.Trial, run: _Trial) -> None:
        """The outcome as user attributes (what results and reports read), then the MLflow run's end."""
        trial.set_user_attr("outcome", run.outcome)
        if not (Path(run.cfg.out_dir) / "best.pt").is_file():  # a diverged first epoch leaves no checkpoint: name none
            trial.set_user_attr("checkpoint", "")
        self._settle(run)
        if run.outcome in ("diverged", "pruned"):
            trial.set_user_attr("reason", run.reason)
        elif run.outcome != "completed":
            trial.set_user_attr("fail_reason", run.reason[:2000])
        if run.history:  # pruned, diverged and failed curves are kept too, beside the checkpoint (and in MLflow)
            write_history(Path(run.cfg.out_dir), [asdict(r) for r in run.history])
            last = run.history[-1]
            trial.set_user_attr("epochs", len(run.history))
            trial.set_user_attr("final_train_acc", last.train_acc)
            trial.set_user_attr("final_val_acc", last.val_acc)
        if run.outcome == "completed":
            _summarise(trial, run)
        if run.run_id is None or self.tracker is None:
            return
        optuna_state = {"completed": "COMPLETE", "pruned": "PRUNED", "diverged": "PRUNED"}.get(run.outcome, "FAIL")
        state = state_of(optuna_state, {"outcome": run.outcome})
        first = run.results[0] if run.results else None
        if first:  # the epoch that diverged never reached on_epoch: log it now
            for record in first.history[len(run.records) :]:
                self.tracker.log_epoch(run.run_id, record)
        self.tracker.end_trial(run.run_id, state, run.reason, run.values, first, run.history)


def _settle_shadow(pruning: optuna.Study | None, run: _Trial) -> None:
    """Tell the pruning study how the mirrored trial ended (multi-objective studies)."""
    if run.shadow is None or pruning is None:
        return
    done = run.outcome == "completed"
    status = optuna.trial.TrialState.COMPLETE if done else optuna.trial.TrialState.PRUNED
    pruning.tell(run.shadow, statistics.fmean(run.values) if done else None, state=status)


def _summarise(trial: optuna.Trial, run: _Trial) -> None:
    trial.set_user_attr("values", run.values)
    trial.set_user_attr("value_sd", statistics.stdev(run.values) if len(run.values) > 1 else 0.0)
    for key in ("test_acc", "test_loss", "best_epoch", "best_val_acc"):
        vals = [getattr(r, key) for r in run.results if getattr(r, key) is not None]
        if vals:
            trial.set_user_attr(key, statistics.fmean(vals))


def failure_reason(exc: BaseException) -> str:
    """What a FAILed trial records, shows and logs: the error's type and message, never empty."""
    text = str(exc).strip() or "no message"
    kind = "" if isinstance(exc, StudyrunnerError) else f"{type(exc).__name__}: "
    return f"{kind}{text}"[:2000]


def _surplus(trial: optuna.Trial, target: int) -> bool:
    """True when ``target`` trials numbered before this one already finished, run or wait to run."""
    study = getattr(trial, "study", None)
    if study is None:
        return False
    live = [optuna.trial.TrialState[name] for name in (*OPTUNA_FINISHED, "RUNNING", "WAITING")]
    trials = study.get_trials(deepcopy=False, states=live)
    imported = {t.number for t in trials if t.user_attrs.get("outcome") == "imported"}  # warm-start trials do not count
    ahead = [t for t in trials if t.number < trial.number and t.number not in imported]
    return len(ahead) >= target


def best_checkpoint(study_name: str, storage: str) -> str:
    """The best-validation checkpoint of ``study_name``'s best trial (for model.init=study:NAME)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise StudyrunnerError(f"model.init=study:{study_name}: no study named {study_name!r} in {storage}") from None
    best = best_of(study.get_trials(deepcopy=False), study.directions[0] == optuna.study.StudyDirection.MAXIMIZE)
    if best is None:
        raise StudyrunnerError(f"model.init=study:{study_name}: the study has no completed trial yet")
    path = best.user_attrs.get("checkpoint")
    if not path or not Path(path).is_file():
        raise StudyrunnerError(
            f"model.init=study:{study_name}: best trial {best.number} has no checkpoint file ({path or 'none recorded'})"
        )
    return str(path)

"""The study driver: create or resume an Optuna study, run trials, map outcomes to states.

This is the only place that decides a trial's state:

* COMPLETE - trained to the end; the value is the objective metric (mean over ``repeats`` seeds).
* PRUNED   - stopped by the pruner (``raise optuna.TrialPruned``).
* PRUNED with user attr ``outcome=diverged`` - the loss became non-finite or exploded. Recorded as
  PRUNED, not FAIL, so samplers still learn from it (TPE ranks it with the worst), and with its
  ``reason``; its MLflow run is tagged ``state=DIVERGED``.
* FAIL     - an exception (out of memory, a bad batch); retried with the same parameters up to
  ``max_retries`` times, the reason kept in user attr ``fail_reason``.

``n_trials`` is the number of finished (COMPLETE + PRUNED) trials the study should hold in
total: running the same sweep again tops the study up, it does not add ``n_trials`` more.
"""

from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from .config import DataConfig, TrainConfig, apply_overrides, config_to_dict
from .data import Splits, load_splits
from .engine import EpochRecord, FitResult, fit, resolve_device, resolve_precision
from .errors import StudyrunnerError
from .models import resolve_input
from .results import count_states
from .space import grid_space, suggest
from .spec import SweepSpec
from .stores import resolve_storage

__all__ = [
    "StudyEvents",
    "RunOptions",
    "Objective",
    "run_study",
    "resolve_storage",
    "make_sampler",
    "make_pruner",
    "finished_count",
    "DataSource",
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
optuna.logging.set_verbosity(optuna.logging.ERROR)  # trial failures are reported by studyrunner itself
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class StudyEvents:
    """Hooks for live progress; the CLI overrides them, the defaults do nothing."""

    def trial_started(self, number: int, params: dict[str, Any]) -> None: ...
    def epoch_done(self, number: int, record: EpochRecord, epochs: int) -> None: ...
    def batch_done(self, done: int, total: int) -> None: ...
    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None: ...
    def data_progress(self, what: str, done: int, total: int) -> None: ...


@dataclass
class RunOptions:
    n_trials: int | None = None  # overrides budget.n_trials
    timeout: float | None = None  # overrides budget.timeout (seconds, this invocation)
    overrides: dict[str, Any] = field(default_factory=dict)  # --set key=value on the fixed train config
    storage: str | None = None  # Optuna storage URL; default SQLite runs/optuna.db
    tracking_uri: str | None = None  # MLflow; default SQLite runs/mlflow.db; "none" switches tracking off
    data_dir: str | None = None


def open_storage(url: str, max_retries: int = 1) -> optuna.storages.BaseStorage:
    """RDB storage with heartbeats (a killed worker's trial is failed after the grace period and
    re-queued with its parameters); journal files for ``journal:PATH``."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # wait for the lock instead of failing
    beat = int(os.environ.get("STUDYRUNNER_HEARTBEAT_S", "10"))  # seconds between a running trial's heartbeats
    grace = int(os.environ.get("STUDYRUNNER_GRACE_S", str(3 * beat)))  # silence after which its worker is dead
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=beat,
        grace_period=grace,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retries),
        **kwargs,
    )


def make_sampler(spec: SweepSpec, base: TrainConfig, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sweep's sampler. ``offset`` (the trials already in the study) shifts the seed so that a
    resumed study does not draw its first trials' parameters again; the same history and seed
    still give the same suggestions."""
    s = spec.sampler
    seed = None if s.seed is None else s.seed + offset
    startup: dict[str, Any] = {} if s.n_startup_trials is None else {"n_startup_trials": s.n_startup_trials}
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **startup)
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        return optuna.samplers.GridSampler(grid_space(spec, base), seed=seed)
    if s.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, **startup)
    if s.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, **startup)
    return optuna.samplers.QMCSampler(seed=seed)


def make_pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)
    if p.name == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)
    if p.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1 if p.min_resource == "auto" else p.min_resource, reduction_factor=p.reduction_factor
        )
    if p.name == "threshold":
        return optuna.pruners.ThresholdPruner(lower=p.lower, upper=p.upper, n_warmup_steps=p.warmup_epochs)
    if p.name == "patient":
        return optuna.pruners.PatientPruner(
            optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs),
            patience=p.patience,
            min_delta=p.min_delta,
        )
    return optuna.pruners.NopPruner()


class DataSource:
    """Loads each distinct data configuration once per process and keeps it for later trials."""

    def __init__(self, data_dir: str | None, progress: Callable[[str, int, int], None] | None = None) -> None:
        self.data_dir = data_dir
        self.progress = progress
        self._cache: dict[DataConfig, Splits] = {}

    def __call__(self, cfg: DataConfig) -> Splits:
        if cfg not in self._cache:
            self._cache[cfg] = load_splits(cfg, self.data_dir, self.progress)
        return self._cache[cfg]


def _run_value(result: FitResult, metric: str, direction: str) -> float | None:
    """A run's objective value: the best epoch's value for train/val metrics, the test metric
    (of the best-validation weights) for test metrics."""
    if metric.startswith("test_"):
        return getattr(result, metric)
    vals = [getattr(r, metric) for r in result.history if getattr(r, metric) is not None]
    vals = [v for v in vals if math.isfinite(v)]
    if not vals:
        return None
    return max(vals) if direction == "maximize" else min(vals)


def _intermediate(record: EpochRecord, metric: str) -> float | None:
    key = metric.replace("test_", "val_")
    v = getattr(record, key)
    return v if v is not None and math.isfinite(v) else None


class Objective:
    """``objective(trial) -> value``: sample, build the config, train ``repeats`` seeds, track.

    Works with any ``optuna.Trial`` including ``optuna.trial.FixedTrial``; ``tracker`` may be None.
    """

    def __init__(
        self,
        spec: SweepSpec,
        base: TrainConfig,
        data: DataSource,
        tracker: Any = None,
        events: StudyEvents | None = None,
        target: int | None = None,
    ) -> None:
        self.spec, self.base, self.data, self.tracker, self.target = spec, base, data, tracker, target
        self.events = events or StudyEvents()
        self.direction = spec.objective.resolved_direction
        self._records: list[EpochRecord] = []  # the first seed's epochs seen so far (pruned trials too)

    def __call__(self, trial: optuna.Trial) -> float:
        if self.target is not None and _surplus(trial, self.target):
            trial.set_user_attr("surplus", True)  # another worker took the last slot first
            raise SurplusTrial(f"the study already holds or runs {self.target} trials")
        trial.set_user_attr("worker", f"{os.uname().nodename}:{os.getpid()}")
        sampled = suggest(trial, self.spec, self.base)
        number = getattr(trial, "number", 0)
        try:
            cfg = self._resolve(apply_overrides(self.base, sampled), number)
        except StudyrunnerError as exc:  # e.g. a sampled optim.lr below a fixed sched.min_lr: the same every time
            trial.set_user_attr("fail_reason", f"invalid configuration: {exc}"[:2000])
            trial.set_user_attr("invalid", True)
            raise
        trial.set_user_attr("checkpoint", str(Path(cfg.out_dir) / "best.pt"))
        splits = self.data(cfg.data)
        self.events.trial_started(number, sampled)
        run_id = self._start_run(trial, number, cfg, sampled, splits.classes)
        self._records = []
        state, reason, values, results = "FAIL", "", [], []
        try:
            for r in range(self.spec.repeats):
                result = fit(
                    apply_overrides(cfg, {"seed": cfg.seed + r}),
                    splits,
                    on_epoch=self._on_epoch(trial, number, cfg, run_id, r),
                    on_batch=self.events.batch_done,
                )
                results.append(result)
                if result.outcome == "diverged":
                    state, reason = "DIVERGED", result.reason
                    trial.set_user_attr("outcome", "diverged")
                    trial.set_user_attr("reason", reason)
                    raise optuna.TrialPruned(reason)
                value = _run_value(result, self.spec.objective.metric, self.direction)
                if value is None:
                    raise StudyrunnerError(f"objective metric {self.spec.objective.metric} was never measured")
                values.append(value)
            state = "COMPLETE"
            self._summarise(trial, values, results)
            return statistics.fmean(values)
        except optuna.TrialPruned as exc:
            state = "DIVERGED" if state == "DIVERGED" else "PRUNED"
            reason = reason or str(exc) or "pruned"
            raise
        except KeyboardInterrupt:
            state, reason = "INTERRUPTED", "interrupted (Ctrl-C)"
            trial.set_user_attr("fail_reason", reason)
            raise
        except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised for Optuna to mark FAIL
            reason = f"{type(exc).__name__}: {exc}"
            state = "FAIL"
            trial.set_user_attr("fail_reason", reason[:2000])
            raise
        finally:
            history = results[0].history if results else self._records
            if state != "COMPLETE" and history:  # pruned, diverged and failed curves are kept too
                trial.set_user_attr("history", [vars(r) for r in history])
            self._end_run(run_id, state, reason, values, results)

    def _on_epoch(
        self, trial: optuna.Trial, number: int, cfg: TrainConfig, run_id: str | None, repeat: int
    ) -> Callable[[EpochRecord], None]:
        metric = self.spec.objective.metric

        def on_epoch(record: EpochRecord) -> None:
            if run_id and self.tracker:
                self.tracker.log_epoch(run_id, vars(record), prefix="" if repeat == 0 else f"seed{repeat}_")
            if repeat == 0:
                self._records.append(record)
            self.events.epoch_done(number, record, cfg.epochs)
            value = _intermediate(record, metric)
            if repeat == 0 and value is not None:  # the first seed drives pruning
                trial.report(value, record.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {record.epoch} ({metric} {value:.4f})")

        return on_epoch

    def _summarise(self, trial: optuna.Trial, values: list[float], results: list[FitResult]) -> None:
        best = results[0]
        trial.set_user_attr("outcome", "completed")
        trial.set_user_attr("values", values)
        trial.set_user_attr("value_sd", statistics.stdev(values) if len(values) > 1 else 0.0)
        trial.set_user_attr("classes", best.classes)
        if best.val_confusion:
            trial.set_user_attr("val_confusion", best.val_confusion)
        for key in ("test_acc", "test_loss", "best_epoch", "best_val_acc"):
            vals = [getattr(r, key) for r in results if getattr(r, key) is not None]
            if vals:
                trial.set_user_attr(key, statistics.fmean(vals))
        trial.set_user_attr("epochs", len(best.history))
        trial.set_user_attr("history", [vars(r) for r in best.history])

    storage_url: str | None = None  # where model.init=study:NAME finds the earlier study

    def _resolve(self, cfg: TrainConfig, number: int) -> TrainConfig:
        """Per-trial checkpoint folder; model.init=study:NAME -> that study's best checkpoint."""
        over: dict[str, Any] = {}
        if not cfg.out_dir:
            over["out_dir"] = str(Path("runs/checkpoints").resolve() / self.spec.study / f"trial-{number}")
        if cfg.model.init.startswith("study:"):
            from .results import best_checkpoint

            over["model.init"] = best_checkpoint(cfg.model.init.removeprefix("study:"), self.storage_url or resolve_storage(None))
        return resolve_input(apply_overrides(cfg, over))

    def _start_run(
        self, trial: optuna.Trial, number: int, cfg: TrainConfig, sampled: dict[str, Any], classes: list[str]
    ) -> str | None:
        if self.tracker is None:
            return None
        device = resolve_device(cfg.device)
        tags = {
            "seed": str(cfg.seed),
            "device": str(device),
            "precision": str(resolve_precision(cfg.precision, device) or "float32").replace("torch.", ""),
            "repeats": str(self.spec.repeats),
        }
        run_id: str = self.tracker.start_trial(number, cfg, sampled, tags, classes)
        trial.set_user_attr("mlflow_run_id", run_id)
        return run_id

    def _end_run(self, run_id: str | None, state: str, reason: str, values: list[float], results: list[FitResult]) -> None:
        if run_id is None or self.tracker is None:
            return
        from .plots import close, learning_curves

        first = results[0] if results else None
        history = first.history if first else self._records
        if first:  # the epoch that diverged never reached on_epoch: log it now
            for record in first.history[len(self._records) :]:
                self.tracker.log_epoch(run_id, vars(record))
        metrics: dict[str, float | None] = {}
        if values:
            metrics["value"] = statistics.fmean(values)
            metrics["value_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        if first:
            metrics.update(
                test_acc=first.test_acc,
                test_loss=first.test_loss,
                best_val_acc=first.best_val_acc,
                best_epoch=float(first.best_epoch),
                epochs_run=float(len(first.history)),
            )
        if history:
            metrics["epochs_run"] = float(len(history))
        if first and first.val_confusion:
            metrics.update({f"val_acc_{c}": a for c, a in first.per_class_val_acc.items()})
        fig = learning_curves({"seed 0": [vars(r) for r in history]}) if history else None
        try:
            self.tracker.end_trial(run_id, state, metrics, reason, fig)
            if first and first.val_confusion:
                self.tracker.log_confusion(run_id, first.classes, first.val_confusion)
        finally:
            if fig is not None:
                close(fig)


class SurplusTrial(StudyrunnerError):
    """Raised at the start of a trial that would take a study past its n_trials (parallel workers)."""


def _surplus(trial: optuna.Trial, target: int) -> bool:
    """True when ``target`` trials numbered before this one already finished, run or wait to run."""
    study = getattr(trial, "study", None)
    if study is None:
        return False
    live = (*FINISHED, TrialState.RUNNING, TrialState.WAITING)
    ahead = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
    return len(ahead) >= target


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def _busy(study: optuna.Study) -> tuple[int, int]:
    """(running, waiting) trials, here or in other workers."""
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return running, len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _counts(study: optuna.Study) -> dict[str, int]:
    return {"COMPLETE": 0, "PRUNED": 0, "DIVERGED": 0, "FAIL": 0, "RUNNING": 0, **count_states(study.get_trials(deepcopy=False))}


@dataclass
class StudyOutcome:
    study: optuna.Study
    counts: dict[str, int]
    target: int
    stopped: str = ""  # why the invocation ended before the target, if it did


def run_study(
    spec: SweepSpec, opts: RunOptions, events: StudyEvents | None = None, data: DataSource | None = None
) -> StudyOutcome:
    """Create or resume ``spec.study`` and run trials until it holds ``n_trials`` finished ones.

    ``data`` shares loaded datasets between studies run by one process."""
    events = events or StudyEvents()
    base = spec.base_config(opts.overrides)
    storage = open_storage(resolve_storage(opts.storage), spec.max_retries)
    study = optuna.create_study(
        study_name=spec.study,
        storage=storage,
        load_if_exists=True,
        direction=spec.objective.resolved_direction,  # type: ignore[arg-type]
        sampler=make_sampler(spec, base),
        pruner=make_pruner(spec),
    )
    if study.direction.name.lower() != spec.objective.resolved_direction:
        raise StudyrunnerError(
            f"study {spec.study!r} exists with direction {study.direction.name.lower()}; "
            f"the sweep asks {spec.objective.resolved_direction}: use another study name"
        )
    worker = int(os.environ.get("STUDYRUNNER_WORKER", "0"))
    if study.trials or worker:  # resumed or parallel: continue or split the sampler's stream, never replay it
        study.sampler = make_sampler(spec, base, offset=len(study.trials) + 7919 * worker)
    _check_same_config(study, resolve_input(base))  # auto values resolved: data.image_size 0 and 32 are the same
    study.set_user_attr("sweep", spec.model_dump(mode="json"))
    study.set_user_attr("base_config", config_to_dict(resolve_input(base)))
    tracker = _tracker(spec, opts)
    objective = Objective(spec, base, data or DataSource(opts.data_dir, events.data_progress), tracker, events)
    target = opts.n_trials or spec.budget.n_trials
    timeout = opts.timeout or spec.budget.timeout
    objective.target = target
    objective.storage_url = resolve_storage(opts.storage)
    outcome = StudyOutcome(study, _counts(study), target)
    heartbeat = getattr(storage, "get_heartbeat_interval", lambda: None)() is not None
    start, fails_in_row, reaped = time.monotonic(), 0, set[int]()
    try:
        while True:
            if heartbeat:  # trials of killed workers: FAIL, re-queued with their parameters, MLflow run ended
                optuna.storages.fail_stale_trials(study)
                _reap_dead_runs(study, tracker, reaped)
            if finished_count(study) >= target:
                break
            if timeout and time.monotonic() - start > timeout:
                outcome.stopped = f"timeout of {timeout:.0f} s reached"
                break
            running, waiting = _busy(study)
            if heartbeat and not waiting and finished_count(study) + running >= target:
                time.sleep(POLL_S)  # the last trials run elsewhere: wait for them to finish, fail or go stale
                continue
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
            trial = study.trials[-1] if study.trials else None
            if trial is None or trial.user_attrs.get("surplus"):
                continue
            fails_in_row = _after_trial(study, trial, spec, fails_in_row)
            events.trial_finished(study, trial)
            if tracker:
                _update_parent(tracker, study)
            if fails_in_row > spec.max_retries + 2:
                last = trial.user_attrs.get("fail_reason", "?")
                outcome.stopped = f"{fails_in_row} trials in a row failed; last: {last}"
                break
    except KeyboardInterrupt:
        outcome.stopped = "interrupted"
        if tracker:
            _update_parent(tracker, study)
            tracker.close("KILLED")
        outcome.counts = _counts(study)
        raise
    if tracker:
        _update_parent(tracker, study)
        tracker.close("FINISHED" if finished_count(study) >= target else "KILLED")
    outcome.counts = _counts(study)
    return outcome


POLL_S = 2.0  # seconds between looks at a study whose last trials run in other workers


def _reap_dead_runs(study: optuna.Study, tracker: Any, reaped: set[int]) -> None:
    """End the MLflow run of every FAILed trial whose run was left RUNNING (its worker died)."""
    if tracker is None:
        return
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = t.user_attrs.get("mlflow_run_id")
        if t.number in reaped or not run_id:
            continue
        reaped.add(t.number)
        tracker.reap(run_id, f"worker {t.user_attrs.get('worker', '?')} stopped sending heartbeats; trial re-queued")


# keys that say where or how fast a study runs, not what it trains: they may differ between runs
_ENVIRONMENT_KEYS = {"out_dir", "threads", "device", "data.path", "data.cache_dir", "eval_batch_size"}


def _check_same_config(study: optuna.Study, base: TrainConfig) -> None:
    """Refuse to add trials of another fixed configuration to an existing study: its trials
    would no longer be comparable (resume with the same --set values, or use a new study name)."""
    from .config import flatten

    stored = study.user_attrs.get("base_config")
    if not stored or not study.trials:
        return
    defaults = flatten(config_to_dict(TrainConfig()))  # keys added since the study began held their defaults
    old, new = {**defaults, **flatten(stored)}, flatten(config_to_dict(base))
    changed = sorted(k for k in set(old) | set(new) if k not in _ENVIRONMENT_KEYS and old.get(k) != new.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise StudyrunnerError(
            f"study {study.study_name!r} already holds {len(study.trials)} trials of another fixed configuration "
            f"({diffs}); resume it with the same train values and --set options, or give the sweep a new study name"
        )


def _after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, spec: SweepSpec, fails_in_row: int) -> int:
    """Re-queue a failed trial's parameters while it has retries left; count failures in a row."""
    if trial.state != TrialState.FAIL:
        return 0
    tries = int(trial.user_attrs.get("retry", 0))
    if tries < spec.max_retries and trial.params and not trial.user_attrs.get("invalid"):  # retrying cannot help those
        study.enqueue_trial(trial.params, user_attrs={"retry": tries + 1, "retry_of": trial.number}, skip_if_exists=False)
    return fails_in_row + 1


def _tracker(spec: SweepSpec, opts: RunOptions) -> Any:
    if (opts.tracking_uri or "").lower() == "none":
        return None
    from .tracking import Tracker, git_commit, resolve_tracking_uri

    return Tracker(
        resolve_tracking_uri(opts.tracking_uri),
        spec.study,
        {
            "sampler": spec.sampler.name,
            "pruner": spec.pruner.name,
            "git_commit": git_commit(),
            "sweep_file": spec.source,
            "objective": f"{spec.objective.resolved_direction} {spec.objective.metric}",
        },
    )


def _update_parent(tracker: Any, study: optuna.Study) -> None:
    counts = _counts(study)
    metrics: dict[str, float] = {f"n_{k.lower()}": float(v) for k, v in counts.items()}
    params: dict[str, Any] = {}
    try:
        best = study.best_trial
        metrics["best_value"] = float(best.value)  # type: ignore[arg-type]
        metrics["best_trial"] = float(best.number)
        params = best.params
    except ValueError:  # no COMPLETE trial yet
        pass
    finished = counts["COMPLETE"] + counts["PRUNED"] + counts["DIVERGED"]
    tracker.update_parent(metrics, params, {"n_trials_finished": str(finished)})


def run_narrative(
    spec: Any, scale: str, opts: RunOptions, events: StudyEvents | None = None, announce: Callable[[str], None] | None = None
) -> list[StudyOutcome]:
    """Run every step of a narrative study in order, one Optuna study per step (a grid over seeds).

    Resumable: a step whose study already holds its trials runs nothing; the dataset is loaded
    once for all steps.
    """
    if spec.scales and scale not in spec.scales:
        raise StudyrunnerError(f"{spec.source}: no scale {scale!r}; scales: {', '.join(spec.scales)}")
    events = events or StudyEvents()
    data = DataSource(opts.data_dir, events.data_progress)
    outcomes = []
    for i, step in enumerate(spec.steps, 1):
        sweep = spec.step_sweep(step, scale)
        if announce:
            announce(f"step {i}/{len(spec.steps)}: {step.title} [{sweep.study}]")
        outcomes.append(
            run_study(
                sweep,
                RunOptions(None, opts.timeout, opts.overrides, opts.storage, opts.tracking_uri, opts.data_dir),
                events,
                data,
            )
        )
    return outcomes

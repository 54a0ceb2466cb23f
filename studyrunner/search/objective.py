"""The objective: one Optuna trial = sample the space, build the trial's config (``trialconfig``),
train ``repeats`` seeds with the engine, report epochs to the pruner, track the MLflow run.

Works with any ``optuna.Trial``, ``optuna.trial.FixedTrial`` included; ``tracker`` may be None.
What happened is an ``Outcome``, written with the rest of the trial's record (``TrialRecord``);
``states`` turns that and Optuna's state into the trial's state.
"""

from __future__ import annotations

import dataclasses
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

from studyrunner.config import DataConfig, TrainConfig
from studyrunner.engine.data import Splits, load_splits
from studyrunner.engine.decode import Progress
from studyrunner.engine.fit import EpochRecord, FitResult, fit
from studyrunner.errors import StudyrunnerError, Terminated, signalled
from studyrunner.search import pbt
from studyrunner.search.space import suggest
from studyrunner.search.spec import ObjectiveSpec, SweepSpec, parse_constraint
from studyrunner.search.stopping import no_learning
from studyrunner.search.trialconfig import trial_config
from studyrunner.states import OPTUNA_FINISHED, Outcome, TrialRecord
from studyrunner.track.history import write_history
from studyrunner.track.trialfiles import trial_folder

if TYPE_CHECKING:
    from studyrunner.track.runs import Tracker

__all__ = ["StudyEvents", "DataSource", "Objective", "SurplusTrial", "run_value", "failure_reason"]


class StudyEvents:
    """Hooks for live progress; the CLI overrides them, the defaults do nothing."""

    def trial_started(self, number: int, params: dict[str, Any]) -> None: ...
    def epoch_done(self, number: int, record: EpochRecord, epochs: int) -> None: ...
    def batch_done(self, done: int, total: int) -> None: ...
    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None: ...
    def data_progress(self, what: str, done: int, total: int) -> None: ...
    def notice(self, text: str) -> None: ...  # something the user should know before trials run


class DataSource:
    """Loads each distinct data configuration once per process and keeps it for later trials."""

    def __init__(self, data_dir: str | None, progress: Progress = None, notice: Callable[[str], None] | None = None) -> None:
        self.data_dir = data_dir
        self.progress = progress
        self.notice = notice  # hears the data's notes (skipped, nested, too-small) once per data configuration
        self._cache: dict[DataConfig, Splits] = {}

    def __call__(self, cfg: DataConfig) -> Splits:
        if cfg not in self._cache:
            splits = self._cache[cfg] = load_splits(cfg, self.data_dir, self.progress)
            for note in splits.notes:
                if self.notice is not None:
                    self.notice(note)
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
class _Attempt:
    """One trial in progress: its outcome so far and what the first seed has trained."""

    number: int
    cfg: TrainConfig
    run_id: str | None = None  # the trial's MLflow run
    outcome: Outcome = Outcome.FAILED
    reason: str = ""
    values: list[float] = field(default_factory=list)  # the first objective's value per seed
    others: list[list[float]] = field(default_factory=list)  # further objectives' values per seed
    results: list[FitResult] = field(default_factory=list)
    shadow: optuna.Trial | None = None  # multi-objective: the pruning study's trial that mirrors this one
    records: list[EpochRecord] = field(default_factory=list)  # first seed's epochs seen so far (pruned trials too)
    retry: bool = False  # a retry of an earlier attempt: continue from its saved state
    origin: int = 0  # the first attempt's number: the trial's files are in its folder, its runs tagged with it
    delivered: bool = False  # history written, files uploaded, tracking calls flushed

    @property
    def history(self) -> list[EpochRecord]:
        return self.results[0].history if self.results else self.records


def _record_of(trial: optuna.Trial) -> TrialRecord:
    return TrialRecord.of(getattr(trial, "user_attrs", {}))  # FixedTrial has no user_attrs


def _interruption(sigterm: bool) -> str:
    return "terminated (SIGTERM)" if sigterm else "interrupted (Ctrl-C)"


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
        # ``base``: train values and --set applied, not resolved; each trial resolves its own config
        self.spec, self.base, self.data, self.tracker, self.target = spec, base, data, tracker, target
        # multi-objective studies cannot prune (Optuna refuses trial.report there): each trial is mirrored by a
        # trial of this single-objective study of the first objective, whose pruner decides
        self.pruning = pruning
        self.events = events or StudyEvents()
        self.storage_url = storage_url  # where model.init=study:NAME finds the earlier study
        self.direction = spec.objective.resolved_direction
        # seconds, all trials: training, queueing each epoch's metrics and files, waiting for the last uploads at a trial's
        # end, and what the outbox thread spent delivering them in the background
        self.timings = {"fit_s": 0.0, "epoch_logging_s": 0.0, "upload_wait_s": 0.0, "outbox_busy_s": 0.0}
        self.extra_tags: dict[str, str] = {}  # more tags for every trial run: where an executor placed it (Ray)

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        if self.target is not None and _surplus(trial, self.target):
            TrialRecord.write(trial, outcome=Outcome.SURPLUS)  # another worker took the last slot first
            raise SurplusTrial(f"the study already holds or runs {self.target} trials")
        if pbt.is_pbt(self.spec) and (pbt.segment_of(trial) is None or pbt.duplicate(trial)):
            TrialRecord.write(trial, outcome=Outcome.SURPLUS)  # queued twice, or not a segment: never trained
            raise SurplusTrial("not a population segment, or another trial already runs or ran this one")
        TrialRecord.write(trial, worker=f"{os.uname().nodename}:{os.getpid()}")
        attempt, splits, sampled = self._prepare(trial)
        self.events.trial_started(attempt.number, sampled)
        if self.tracker is not None:
            tags = {
                "origin": str(attempt.origin),
                "seed": str(attempt.cfg.seed),
                "device": attempt.cfg.device,
                "precision": attempt.cfg.precision,
                "repeats": str(self.spec.repeats),
                **pbt.lineage_tags(trial),
                **self.extra_tags,
            }
            attempt.run_id = self.tracker.start_trial(attempt.number, attempt.cfg, sampled, tags, splits.classes)
            TrialRecord.write(trial, mlflow_run_id=attempt.run_id)
        try:
            self._fetch(attempt)
            value = self._train(trial, attempt, splits)
            undelivered = self._deliver(attempt)
            if undelivered:  # the values stay in the trial's folder; the retry resumes there and logs again
                raise StudyrunnerError(f"the tracking store did not take the trial's metrics and files: {undelivered}")
            return value
        except optuna.TrialPruned as exc:
            attempt.outcome = Outcome.DIVERGED if attempt.outcome == Outcome.DIVERGED else Outcome.PRUNED
            attempt.reason = attempt.reason or str(exc) or "pruned"
            raise
        except KeyboardInterrupt as exc:
            attempt.outcome, attempt.reason = Outcome.INTERRUPTED, _interruption(isinstance(exc, Terminated))
            raise
        except BaseException as exc:  # recorded, then re-raised for Optuna to mark FAIL
            sig = signalled()
            if sig is not None:  # Ctrl-C/SIGTERM surfaced as another error (inside torch.save, a driver): an interruption
                attempt.outcome, attempt.reason = Outcome.INTERRUPTED, _interruption(sig == signal.SIGTERM)
                raise (Terminated() if sig == signal.SIGTERM else KeyboardInterrupt()) from exc
            attempt.outcome, attempt.reason = Outcome.FAILED, failure_reason(exc)
            raise
        finally:
            self._record(trial, attempt)

    def _prepare(self, trial: optuna.Trial) -> tuple[_Attempt, Splits, dict[str, Any]]:
        """Sample, build the config, load the data. A failure here is recorded all the same (never
        a FAIL without a reason); bad data or config is marked invalid: the same on every retry."""
        try:
            sampled = suggest(trial, self.spec, self.base)
            attempt = _Attempt(getattr(trial, "number", 0), self._trial_config(trial, sampled))
            attempt.origin = _record_of(trial).first_attempt(attempt.number)
            attempt.retry = attempt.origin != attempt.number
            return attempt, self.data(attempt.cfg.data), sampled
        except Exception as exc:
            if not _record_of(trial).fail_reason:
                TrialRecord.write(trial, fail_reason=failure_reason(exc))
            if isinstance(exc, StudyrunnerError):
                TrialRecord.write(trial, invalid=True)
            TrialRecord.write(trial, outcome=Outcome.FAILED)
            raise

    def _trial_config(self, trial: optuna.Trial, sampled: dict[str, Any]) -> TrainConfig:
        """The trial's resolved config (``trialconfig.trial_config``) in its checkpoint folder.
        An invalid combination fails the trial with the reason and is not retried."""
        number = getattr(trial, "number", 0)
        origin = _record_of(trial).first_attempt(number)  # a retry continues its first attempt's folder
        if origin == number:
            TrialRecord.write(trial, origin=number)
        folder = str(trial_folder(self.spec.study, origin))
        try:
            segment = pbt.segment_of(trial)  # a PBT segment trains up to its last epoch
            values = {**sampled, "epochs": int(segment["end"])} if segment else sampled
            cfg = trial_config(self.base, values, out_dir=folder, storage=self.storage_url)
        except StudyrunnerError as exc:  # e.g. a sampled optim.lr below a fixed sched.min_lr: the same every time
            TrialRecord.write(trial, fail_reason=f"invalid configuration: {exc}"[:2000], invalid=True)
            raise
        TrialRecord.write(trial, checkpoint=str(Path(cfg.out_dir) / "best.pt"), out_dir=str(cfg.out_dir))
        return cfg

    def _train(self, trial: optuna.Trial, attempt: _Attempt, splits: Splits) -> float | list[float]:
        if self.pruning is not None:
            with warnings.catch_warnings():  # Optuna suggests heartbeats with optimize(); the mirror is driven by hand
                warnings.simplefilter("ignore", UserWarning)
                attempt.shadow = self.pruning.ask()
        for r in range(self.spec.repeats):
            start = time.perf_counter()
            cfg = dataclasses.replace(attempt.cfg, seed=attempt.cfg.seed + r)  # already validated: only the seed moves
            n_eval = len(splits.val) if splits.val is not None else len(splits.train)
            on_epoch = self._on_epoch(trial, attempt, r, len(splits.classes), n_eval)
            start_at = self._inherit(trial, cfg)
            try:
                resume = attempt.retry or start_at is not None
                # where a retry continued is recorded before it trains on: an interrupted retry counts its epochs once
                noted = (lambda n: self._resumed(trial, attempt, n)) if r == 0 and attempt.retry else None
                result = fit(
                    cfg, splits, on_epoch, self.events.batch_done, resume=resume, segment_start=start_at, on_resume=noted
                )
            finally:  # pruned runs end in an exception: their training time counts all the same
                self.timings["fit_s"] += time.perf_counter() - start
            attempt.results.append(result)
            if result.outcome == "diverged":
                attempt.outcome, attempt.reason = Outcome.DIVERGED, result.reason
                raise optuna.TrialPruned(result.reason)
            values = [run_value(result, o.metric, o.resolved_direction) for o in self.spec.targets]
            missing = [o.metric for o, v in zip(self.spec.targets, values, strict=True) if v is None]
            if missing:
                raise StudyrunnerError(f"objective metric {', '.join(missing)} was never measured")
            attempt.values.append(values[0])  # type: ignore[arg-type]
            attempt.others.append(values[1:])  # type: ignore[arg-type]
        attempt.outcome = Outcome.COMPLETED
        means = [statistics.fmean(attempt.values)] + [statistics.fmean(col) for col in zip(*attempt.others, strict=True)]
        self._constrain(trial, means, attempt.results[0])
        return means if len(means) > 1 else means[0]

    def _inherit(self, trial: optuna.Trial, cfg: TrainConfig) -> int | None:
        """A PBT segment: its parent's state in its folder; the epoch it continues from."""
        start = pbt.segment_start(trial)
        rec = pbt.segment_of(trial)
        if start is not None and rec is not None:
            source = pbt.inherit_state(trial, cfg.out_dir, cfg.seed, self.tracker)
            if source and rec.get("event") == "exploit":
                changed = ", ".join(f"{k} {a:.3g} -> {b:.3g}" for k, (a, b) in rec["changes"].items()) or "no value changed"
                self.events.notice(
                    f"trial {trial.number}: member {rec['member']} copies trial {rec['parent']} after epoch {start}; {changed}"
                )
        return start

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
                value = run_value(first, metric, ObjectiveSpec(metric=metric).resolved_direction)  # type: ignore[arg-type]
            v = float("inf") if value is None else value
            out.append(v - bound if op == "<=" else bound - v)
            trial.set_constraint(text, out[-1])  # the sampler reads it (<= 0: feasible)
        TrialRecord.write(trial, constraints=out)

    def _on_epoch(
        self, trial: optuna.Trial, attempt: _Attempt, repeat: int, classes: int, n_eval: int
    ) -> Callable[[EpochRecord], None]:
        metric = self.spec.objective.metric
        inherited = pbt.segment_start(trial) or 0  # a PBT segment's first epochs are its parent's
        after = 0 if pbt.is_pbt(self.spec) else self.spec.pruner.no_learning_epochs

        def on_epoch(record: EpochRecord) -> None:
            if attempt.run_id and self.tracker:
                start = time.perf_counter()
                self.tracker.log_epoch(attempt.run_id, record, prefix="" if repeat == 0 else f"seed{repeat}_")
                self.tracker.upload(attempt.run_id, attempt.cfg.out_dir)  # this epoch's checkpoint and resume state
                self.timings["epoch_logging_s"] += time.perf_counter() - start
            if record.epoch > inherited:
                self.events.epoch_done(attempt.number, record, attempt.cfg.epochs)
            if repeat:
                return
            attempt.records.append(record)
            value = _intermediate(record, metric)
            # multi-objective: the mirrored single-objective trial judges (none without a pruner)
            judge = attempt.shadow if len(self.spec.targets) > 1 else trial
            if value is not None and judge is not None:  # the first seed drives pruning
                judge.report(value, record.epoch)
            stuck = no_learning(attempt.records, classes, n_eval, after)
            if stuck:  # hopeless whatever the pruner's warm-up
                raise optuna.TrialPruned(stuck)
            if value is not None and judge is not None and judge.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record.epoch} ({metric} {value:.4f})")

        return on_epoch

    def _fetch(self, attempt: _Attempt) -> None:
        """A retry on a machine without the trial's files: the newest uploaded resume state first."""
        if not (attempt.retry and self.tracker is not None and attempt.cfg.out_dir):
            return
        source, count = self.tracker.fetch_state(attempt.origin, attempt.cfg.out_dir)
        if source:
            self.events.notice(f"trial {attempt.number}: fetched {count} files of trial {attempt.origin} from run {source}")

    def _resumed(self, trial: optuna.Trial, attempt: _Attempt, epochs: int) -> None:
        """Where a retry continued: user attribute and tag ``resumed_from_epoch`` (0: from the start)."""
        TrialRecord.write(trial, resumed_from_epoch=epochs)
        if attempt.run_id and self.tracker is not None:
            self.tracker.set_tags(attempt.run_id, {"resumed_from_epoch": str(epochs)})

    def _deliver(self, attempt: _Attempt) -> str:
        """The history beside the checkpoints, then the trial's files uploaded and its queued
        tracking calls made: "" when all arrived (or nothing is tracked), else what did not."""
        if attempt.delivered:
            return ""
        attempt.delivered = True
        if attempt.history:
            write_history(Path(attempt.cfg.out_dir), [asdict(r) for r in attempt.history])
        if attempt.run_id is None or self.tracker is None:
            return ""
        start = time.perf_counter()
        self.tracker.upload(attempt.run_id, attempt.cfg.out_dir)
        undelivered = self.tracker.flush(attempt.run_id)
        self.timings["upload_wait_s"] += time.perf_counter() - start  # what the trial waited for at its end
        self.timings["outbox_busy_s"] = self.tracker.outbox.busy_s  # all the uploads and metrics took, off the loop
        return undelivered

    def _settle(self, attempt: _Attempt) -> None:
        """The pruning study's mirror told; a finished trial's state files removed (nothing to resume)."""
        _settle_shadow(self.pruning, attempt)
        # PBT keeps them: the next segment starts from its parent's state
        if attempt.outcome.state.finished and attempt.cfg.out_dir and not pbt.is_pbt(self.spec):
            for saved in Path(attempt.cfg.out_dir).glob("state-seed*.pt"):
                saved.unlink(missing_ok=True)

    def _record(self, trial: optuna.Trial, attempt: _Attempt) -> None:
        """The outcome and the rest of the trial's record (what results and reports read), then the
        MLflow run's end."""
        TrialRecord.write(trial, outcome=attempt.outcome)
        if not (Path(attempt.cfg.out_dir) / "best.pt").is_file():  # a diverged first epoch leaves no checkpoint: name none
            TrialRecord.write(trial, checkpoint="")
        self._settle(attempt)
        if attempt.outcome in (Outcome.DIVERGED, Outcome.PRUNED):
            TrialRecord.write(trial, reason=attempt.reason)
        elif attempt.outcome != Outcome.COMPLETED:
            TrialRecord.write(trial, fail_reason=attempt.reason[:2000])
        self._deliver(attempt)  # pruned, diverged and failed curves are kept too, beside the checkpoint and in MLflow
        if attempt.history:
            last = attempt.history[-1]
            own = len(attempt.history) - (pbt.segment_start(trial) or 0)  # a PBT segment's inherited epochs are not its own
            TrialRecord.write(trial, epochs=own, final_train_acc=last.train_acc, final_val_acc=last.val_acc)
        if attempt.outcome == Outcome.COMPLETED:
            _summarise(trial, attempt)
        if attempt.run_id is None or self.tracker is None:
            return
        first = attempt.results[0] if attempt.results else None
        if first:  # the epoch that diverged never reached on_epoch: log it now
            for record in first.history[len(attempt.records) :]:
                self.tracker.log_epoch(attempt.run_id, record)
        self.tracker.end_trial(attempt.run_id, attempt.outcome.state, attempt.reason, attempt.values, first, attempt.history)


def _settle_shadow(pruning: optuna.Study | None, attempt: _Attempt) -> None:
    """Tell the pruning study how the mirrored trial ended (multi-objective studies)."""
    if attempt.shadow is None or pruning is None:
        return
    done = attempt.outcome == Outcome.COMPLETED
    status = optuna.trial.TrialState.COMPLETE if done else optuna.trial.TrialState.PRUNED
    pruning.tell(attempt.shadow, statistics.fmean(attempt.values) if done else None, state=status)


def _summarise(trial: optuna.Trial, attempt: _Attempt) -> None:
    values = attempt.values
    TrialRecord.write(trial, values=values, value_sd=statistics.stdev(values) if len(values) > 1 else 0.0)
    for key in ("test_acc", "test_loss", "best_epoch", "best_val_acc"):
        vals = [getattr(r, key) for r in attempt.results if getattr(r, key) is not None]
        if vals:
            TrialRecord.write(trial, **{key: statistics.fmean(vals)})


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
    imported = {t.number for t in trials if TrialRecord.of(t.user_attrs).outcome == Outcome.IMPORTED}  # not counted
    ahead = [t for t in trials if t.number < trial.number and t.number not in imported]
    return len(ahead) >= target

"""The study driver: create or resume an Optuna study and run trials until it holds ``n_trials``
finished ones; retries, heartbeats of parallel workers, the study's MLflow parent run.

``n_trials`` is the number of finished (COMPLETE, PRUNED, DIVERGED) trials the study should
hold in total: running the same sweep again tops the study up, it does not add ``n_trials`` more.
A trial that FAILs (an exception) is re-queued with the same parameters up to ``max_retries``
times. What a trial's outcome means is decided in ``states``; the trial itself is the objective's.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from studyrunner.config import RUNTIME_KEYS, TrainConfig, apply_overrides, config_to_dict, flatten
from studyrunner.engine.data import check_objective_split, resolve_root
from studyrunner.engine.resolve import resolve_config
from studyrunner.errors import StudyrunnerError
from studyrunner.search.best import best_trial, epochs_spent, register_study
from studyrunner.search.objective import DataSource, Objective, StudyEvents
from studyrunner.search.pbt import advance, is_pbt, population_target, reconcile
from studyrunner.search.samplers import make_pruner, make_sampler
from studyrunner.search.spec import SweepSpec
from studyrunner.search.stopping import converged
from studyrunner.search.warmstart import enqueue_configs, warm_start
from studyrunner.states import (
    StopReason,
    TrialRecord,
    TrialState,
    count_states,
    finished_count,
    first_value,
    trial_state,
)
from studyrunner.stores import check_storage, check_tracking, open_storage, resolve_storage, resolve_tracking_uri, setup_lock
from studyrunner.track.machine import environment_tags

if TYPE_CHECKING:
    from studyrunner.track.runs import Tracker

__all__ = [
    "RunOptions",
    "Stop",
    "StudyOutcome",
    "run_study",
    "check_stores",
    "check_budget",
    "POLL_S",
]

POLL_S = 2.0  # seconds between looks at a study whose last trials run in other workers
_WORKER_STRIDE = 7919  # seed offset between parallel workers' sampler streams (a prime)


@dataclass
class RunOptions:
    n_trials: int | None = None  # overrides budget.n_trials
    timeout: float | None = None  # overrides budget.timeout (seconds, this invocation)
    overrides: dict[str, Any] = field(default_factory=dict)  # --set key=value on the fixed train config
    storage: str | None = None  # Optuna storage URL; default SQLite runs/optuna.db
    tracking_uri: str | None = None  # MLflow; default SQLite runs/mlflow.db; "none" switches tracking off
    data_dir: str | None = None
    ray: str | None = None  # --ray: trials as Ray tasks on local (a fresh instance), auto or HOST:PORT; None: in this process
    cpus_per_trial: float | None = None  # --cpus-per-trial: wins over the sweep's resources.cpus (Ray only)
    gpus_per_trial: float | None = None  # --gpus-per-trial: wins over the sweep's resources.gpus (Ray only)


@dataclass(frozen=True)
class Stop:
    """Why an invocation ended before its target: a kind, and the sentence that says it."""

    kind: StopReason = StopReason.NONE
    text: str = ""

    def __bool__(self) -> bool:
        return self.kind != StopReason.NONE


@dataclass
class StudyOutcome:
    study: optuna.Study
    counts: dict[TrialState, int]
    target: int
    stop: Stop = field(default_factory=Stop)  # why the invocation ended before the target, if it did
    timings: dict[str, float] = field(default_factory=dict)  # seconds in training and in epoch logging (Objective.timings)

    @property
    def stopped(self) -> str:
        return self.stop.text

    @property
    def failed(self) -> str:
        """Why the study did not work (failures stopped it, or every trial failed); "" when it did."""
        if self.stop.kind == StopReason.FAILURES:
            return self.stop.text
        if not self.counts.get(TrialState.FAIL) or any(self.counts.get(s) for s in TrialState if s.finished):
            return ""
        fails = [t for t in self.study.get_trials(deepcopy=False) if trial_state(t) == TrialState.FAIL]
        reason = TrialRecord.of(fails[-1].user_attrs).fail_reason or "no reason recorded"
        return f"all {len(fails)} trials failed; last: {reason}"


def run_study(
    spec: SweepSpec, opts: RunOptions, events: StudyEvents | None = None, data: DataSource | None = None
) -> StudyOutcome:
    """Create or resume ``spec.study`` and run trials until it holds ``n_trials`` finished ones.

    ``data`` shares loaded datasets between studies run by one process."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trial failures are reported by studyrunner itself
    events = events or StudyEvents()
    base = spec.base_config(opts.overrides)  # train: then --set, validated once; each trial resolves its own
    resolved = resolve_config(base)  # what the study records and compares: "auto" decided for the base model
    target = population_target(spec, base) if is_pbt(spec) else opts.n_trials or spec.budget.n_trials
    check_budget(spec, target)
    if data is None:  # a test_ objective on folders without test/, before any store is touched
        check_objective_split(spec.objective.metric, base.data, opts.data_dir)
    cluster = None  # a bad Ray address or a trial no node can hold is refused before any store is touched
    if opts.ray:
        from studyrunner.search.raytrials import connect_cluster

        cluster = connect_cluster(spec, opts.ray, opts.cpus_per_trial, opts.gpus_per_trial, opts.storage)
    url = resolve_storage(opts.storage)
    with setup_lock():  # processes started at once on fresh stores take turns creating them
        check_stores(url, opts.tracking_uri)
        storage = open_storage(url, spec.max_retries)
        study = _open_study(spec, base, resolved, storage, events)
        warm_start(study, spec, resolved, url)
        _requeue_interrupted(study)
        enqueue_configs(study, spec, base)
        if is_pbt(spec):  # the population's first segments, or what a killed run left unqueued
            reconcile(study, spec, base.epochs)
        _record_data_root(study, base, opts.data_dir)
        tracker = _tracker(spec, opts)
        if tracker is not None:  # where a report finds the curves of trials that ran on another machine
            study.set_user_attr("tracking_uri", tracker.uri)
    source = data or DataSource(opts.data_dir, events.data_progress, events.notice)
    objective = Objective(spec, base, source, tracker, events, target, url, _pruning_study(spec, storage))
    heartbeat = isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval() is not None
    driver = _Driver(study, spec, objective, tracker, events, target, heartbeat)
    timeout = opts.timeout or spec.budget.timeout
    try:
        stop = driver.run(timeout) if cluster is None else cluster.run(driver, timeout)
    except KeyboardInterrupt:
        driver.close("KILLED")
        raise
    finally:
        if cluster is not None:
            cluster.close()
    done = finished_count(study.get_trials(deepcopy=False)) >= target or stop.kind in (StopReason.CONVERGED, StopReason.BUDGET)
    if stop and tracker is not None:
        tracker.update_parent({}, {}, {"stop_reason": stop.text[:5000]})
    if done and tracker is not None:
        register_study(study, tracker.uri, events)
    driver.close("FINISHED" if done else "KILLED")
    return StudyOutcome(study, driver.counts(), target, stop, objective.timings)


def _open_study(
    spec: SweepSpec, base: TrainConfig, resolved: TrainConfig, storage: optuna.storages.BaseStorage, events: StudyEvents
) -> optuna.Study:
    """The study, created or loaded; a resumed study or a parallel worker continues the sampler's
    stream at another offset, never replays it."""
    study = optuna.create_study(
        study_name=spec.study,
        storage=storage,
        load_if_exists=True,
        directions=spec.directions,  # type: ignore[arg-type]
        sampler=make_sampler(spec, base),
        pruner=make_pruner(spec),
    )
    found = [d.name.lower() for d in study.directions]
    if found != spec.directions:
        raise StudyrunnerError(
            f"study {spec.study!r} exists with direction(s) {', '.join(found)}; "
            f"the sweep asks {', '.join(spec.directions)}: use another study name"
        )
    _check_same_config(study, resolved)
    with warnings.catch_warnings():  # marked experimental by Optuna; optuna-dashboard shows these names
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.metric for o in spec.targets])
    stream = _claim_stream(study)
    if stream:
        study.sampler = make_sampler(spec, base, offset=_WORKER_STRIDE * stream)
    changed = _search_changes(study, spec)
    if changed:
        events.notice(
            f"study {spec.study!r} resumes with another {' and '.join(changed)} than it began with; "
            "its earlier trials were pruned or sampled under the old settings"
        )
    study.set_user_attr("sweep", spec.model_dump(mode="json"))
    study.set_user_attr("base_config", config_to_dict(resolved))
    return study


def _search_changes(study: optuna.Study, spec: SweepSpec) -> list[str]:
    """The search settings (sampler, pruner, space) that differ from those the study recorded."""
    stored = study.user_attrs.get("sweep")
    if not stored or not study.trials:
        return []
    now = spec.model_dump(mode="json")
    return [key for key in ("sampler", "pruner", "space") if stored.get(key) != now.get(key)]


def _pruning_study(spec: SweepSpec, storage: optuna.storages.BaseStorage) -> optuna.Study | None:
    """Multi-objective studies: the single-objective study of the first objective whose pruner
    decides for them (``NAME.pruning``; Optuna cannot prune multi-objective trials itself)."""
    if len(spec.targets) < 2 or spec.pruner.name == "none":
        return None
    return optuna.create_study(
        study_name=f"{spec.study}.pruning",
        storage=storage,
        load_if_exists=True,
        direction=spec.objective.resolved_direction,  # type: ignore[arg-type]
        pruner=make_pruner(spec),
    )


def _requeue_interrupted(study: optuna.Study) -> None:
    """Queue every INTERRUPTED trial (Ctrl-C, SIGTERM) again, once, with its parameters: the
    retry continues from the last epoch its state file holds."""
    trials = study.get_trials(deepcopy=False)
    queued = {TrialRecord.of(t.user_attrs).retry_of for t in trials}
    for t in trials:
        if trial_state(t) == TrialState.INTERRUPTED and t.number not in queued and t.params:
            record = TrialRecord.of(t.user_attrs)
            attrs: dict[str, Any] = {"retry_of": t.number, "origin": record.first_attempt(t.number)}
            if record.pbt:  # the same population segment, from the same decision
                attrs["pbt"] = record.pbt
            study.enqueue_trial(t.params, user_attrs=attrs, skip_if_exists=False)


def _record_data_root(study: optuna.Study, base: TrainConfig, data_dir: str | None) -> None:
    """Where this study's images are (``export --best`` writes it as data.path, so that the config it
    prints trains without the environment that named the folder)."""
    with contextlib.suppress(StudyrunnerError):  # no folder yet: loading the data says why, with the trial
        study.set_user_attr("data_root", str(resolve_root(base.data, data_dir).resolve()))


def _claim_stream(study: optuna.Study) -> int:
    """This process's sampler stream: 0 for the first process on a fresh study (the sweep's seed,
    reproducible), then 1, 2, ... for every later process, resumed or parallel. Claimed under
    ``setup_lock``, so two processes started at once never draw the same parameters."""
    claimed = int(study.user_attrs.get("sampler_streams", 1 if study.trials else 0))
    study.set_user_attr("sampler_streams", claimed + 1)
    return claimed


def check_stores(url: str, tracking_uri: str | None) -> None:
    """Both stores usable (see ``stores.check_storage``), checked before either is written."""
    check_storage(url)
    if (tracking_uri or "").lower() != "none":
        check_tracking(resolve_tracking_uri(tracking_uri))


def check_budget(spec: SweepSpec, target: int) -> None:
    """A grid sampler runs each point once: a budget beyond the grid is refused."""
    if spec.sampler.name != "grid":
        return
    points = spec.grid_size()
    if target > points:
        raise StudyrunnerError(
            f"{spec.source or spec.study}: n_trials {target} exceeds the grid's {points} points; "
            f"set budget.n_trials (or --n-trials) to at most {points}"
        )


@dataclass
class _Driver:
    """The run loop of one invocation, and what it needs between steps."""

    study: optuna.Study
    spec: SweepSpec
    objective: Objective
    tracker: Tracker | None
    events: StudyEvents
    target: int
    heartbeat: bool  # trials of workers that stopped beating are failed and re-queued
    fails_in_row: int = 0
    reaped: set[int] = field(default_factory=set)
    said_waiting: bool = False  # the line on waiting without heartbeats is said once

    def counts(self) -> dict[TrialState, int]:
        return count_states(self.study.get_trials(deepcopy=False))

    def finished(self) -> int:
        return finished_count(self.study.get_trials(deepcopy=False))

    def run(self, timeout: float | None) -> Stop:
        """Trials until the target is reached; why it stopped early, if it did."""
        start = time.monotonic()
        while True:
            self.sweep_dead_workers()
            end = self.limit(start, timeout)
            if end is not None:
                return end
            if self._others_finish_it() or not self.queued():
                time.sleep(POLL_S)
                continue
            stopped = self.step()
            if stopped:
                return stopped

    def sweep_dead_workers(self) -> None:
        """Trials of killed workers (heartbeats stopped): FAIL, re-queued with their parameters, MLflow run ended."""
        if self.heartbeat:
            with warnings.catch_warnings():  # marked experimental by Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            self._reap_dead_runs()

    def limit(self, start: float, timeout: float | None) -> Stop | None:
        """The end of this invocation: a falsy Stop at the target, the timeout's once it passed; None while it goes on."""
        if self.finished() >= self.target:
            return Stop()
        if timeout and time.monotonic() - start > timeout:
            return Stop(StopReason.TIMEOUT, f"timeout of {timeout:.0f} s reached")
        return self._epoch_budget()

    def _epoch_budget(self) -> Stop | None:
        """``budget.epochs``: the epochs trained so far (each seed's; a running trial counts in full)
        leave no room for another full trial."""
        allowed = self.spec.budget.epochs
        if not allowed:
            return None
        full = self.spec.sampler.interval if is_pbt(self.spec) else self.objective.base.epochs * self.spec.repeats
        spent = epochs_spent(self.study.get_trials(deepcopy=False), full, self.spec.repeats)
        if spent + full <= allowed:
            return None
        return Stop(StopReason.BUDGET, f"epoch budget reached: {spent} of budget.epochs {allowed} spent, a trial takes {full}")

    def _others_finish_it(self) -> bool:
        """The last trials run in other workers: wait for them to finish, fail or go stale, rather
        than start trials that would only be cancelled as surplus. Without heartbeats (a grpc://
        storage proxy, a journal file) a killed worker's trial never goes stale: one line says so."""
        trials = self.study.get_trials(deepcopy=False)
        states = [trial_state(t) for t in trials]
        running, waiting = states.count(TrialState.RUNNING), states.count(TrialState.WAITING)
        wait = not waiting and finished_count(trials) + running >= self.target
        if wait and not self.heartbeat and not self.said_waiting:
            self.said_waiting = True
            numbers = ", ".join(str(t.number) for t, s in zip(trials, states, strict=True) if s == TrialState.RUNNING)
            self.events.notice(
                f"waiting for trial(s) {numbers} of other workers; this storage has no heartbeats, so a killed worker's "
                f"trial stays RUNNING: free its slot with `optuna tell --storage DATABASE_URL --study-name "
                f"{self.study.study_name} --trial-number N --state fail`"
            )
        return wait

    def queued(self) -> bool:
        """PBT trials come from the queue alone: True when a segment waits to run (the queue is
        repaired first when it ran dry); other samplers ask for new trials at will."""
        if not is_pbt(self.spec):
            return True
        waiting = (optuna.trial.TrialState.WAITING,)
        if self.study.get_trials(deepcopy=False, states=waiting):
            return True
        return reconcile(self.study, self.spec, self.objective.base.epochs) > 0

    def step(self) -> Stop:
        """One trial, then its retry (if it failed), the events and the parent run; a reason to
        stop when failures keep coming."""
        ran: list[optuna.trial.FrozenTrial] = []  # the trial this call ran: with other workers, not always the last one
        self.study.optimize(
            self.objective, n_trials=1, catch=(Exception,), gc_after_trial=False, callbacks=[lambda _, t: ran.append(t)]
        )
        return Stop() if not ran else self.finish_trial(ran[-1])

    def finish_trial(self, trial: optuna.trial.FrozenTrial) -> Stop:
        """What follows a trial, whichever executor ran it: its retry (if it failed), the events and
        the parent run; a reason to stop when the study converged or failures keep coming."""
        if trial_state(trial) == TrialState.CANCELLED:
            return Stop()
        self._after_trial(trial)
        if is_pbt(self.spec):
            advance(self.study, self.spec, self.objective.base.epochs, trial)
        self.events.trial_finished(self.study, trial)
        self._update_parent()
        converged = self._converged()
        if converged:
            return Stop(StopReason.CONVERGED, converged)
        if self.fails_in_row > self.spec.max_retries + 2:
            why = TrialRecord.of(trial.user_attrs).fail_reason or "no reason recorded"
            return Stop(StopReason.FAILURES, f"{self.fails_in_row} trials in a row failed; last: {why}")
        return Stop()

    def _converged(self) -> str:
        """The study's stopping rule (``budget.patience``): why it converged, or ""."""
        budget = self.spec.budget
        if not budget.patience:
            return ""
        complete = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        done = sorted((t for t in complete if trial_state(t) == TrialState.COMPLETE), key=lambda t: t.number)
        if isinstance(budget.min_improvement, str):  # noise: twice the seeds' standard deviation, averaged over trials
            sds = [sd for sd in (TrialRecord.of(t.user_attrs).value_sd for t in done) if sd is not None]
            margin = 2 * statistics.fmean(sds) if sds else 0.0
        else:
            margin = budget.min_improvement
        maximize = self.spec.objective.resolved_direction == "maximize"
        return converged([first_value(t) or 0.0 for t in done], maximize, budget.patience, margin)

    def _after_trial(self, trial: optuna.trial.FrozenTrial) -> None:
        """Re-queue a failed trial's parameters while it has retries left; count failures in a row."""
        if trial_state(trial) != TrialState.FAIL:
            self.fails_in_row = 0
            return
        self.fails_in_row += 1
        record = TrialRecord.of(trial.user_attrs)
        if record.retry < self.spec.max_retries and trial.params and not record.invalid:  # retrying cannot help those
            origin = record.first_attempt(trial.number)
            attrs = {"retry": record.retry + 1, "retry_of": trial.number, "origin": origin}
            if record.pbt:  # the same segment, from the same decision
                attrs["pbt"] = record.pbt
            self.study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)

    def _reap_dead_runs(self) -> None:
        """End the MLflow run of every FAILed trial whose run was left RUNNING (its worker died)."""
        if self.tracker is None:
            return
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
            record = TrialRecord.of(t.user_attrs)
            if t.number in self.reaped or trial_state(t) != TrialState.FAIL:
                continue
            self.reaped.add(t.number)
            worker = record.worker or "?"
            self.tracker.reap_trial(t.number, f"worker {worker} stopped sending heartbeats; trial re-queued")

    def _update_parent(self) -> None:
        """Counts by state, the best value and the best parameters on the study's parent run."""
        if self.tracker is None:
            return
        counts = self.counts()
        metrics = {f"n_{s.value.lower()}": float(counts.get(s, 0)) for s in TrialState if s != TrialState.WAITING}
        params: dict[str, Any] = {}
        best = best_trial(self.study)
        if best is not None:  # on the first objective; a multi-objective study's front is in `show`
            metrics.update(best_value=first_value(best) or 0.0, best_trial=float(best.number))
            params = best.params
        tags = {"n_trials_finished": str(self.finished())}
        failed = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        if failed:  # the parent run says why trials fail, not only how many
            last = failed[-1]
            why = TrialRecord.of(last.user_attrs).fail_reason or "no reason"
            tags["last_fail_reason"] = f"trial {last.number}: {why}"[:5000]
        self.tracker.update_parent(metrics, params, tags)

    def close(self, status: str) -> None:
        if self.tracker is not None:
            self._update_parent()
            self.tracker.close(status)


def _check_same_config(study: optuna.Study, base: TrainConfig) -> None:
    """Refuse to add trials of another fixed configuration to an existing study: its trials
    would no longer be comparable (resume with the same --set values, or use a new study name)."""
    stored = study.user_attrs.get("base_config")
    if not stored or not study.trials:
        return
    defaults = flatten(config_to_dict(TrainConfig()))  # keys added since the study began held their defaults
    old = {**defaults, **flatten(stored)}
    with contextlib.suppress(StudyrunnerError):  # resolved as today, so that a new "auto" key compares equal
        old = flatten(config_to_dict(resolve_config(apply_overrides(TrainConfig(), old))))
    new = flatten(config_to_dict(base))
    changed = sorted(k for k in set(old) | set(new) if k not in RUNTIME_KEYS and old.get(k) != new.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise StudyrunnerError(
            f"study {study.study_name!r} already holds {len(study.trials)} trials of another fixed configuration "
            f"({diffs}); resume it with the same train values and --set options, or give the sweep a new study name"
        )


def _tracker(spec: SweepSpec, opts: RunOptions) -> Tracker | None:
    if (opts.tracking_uri or "").lower() == "none":
        return None
    from studyrunner.track.runs import Tracker, git_commit

    tags = {
        "sampler": spec.sampler.name,
        "pruner": spec.pruner.name,
        "git_commit": git_commit(),
        "sweep_file": spec.source,
        "objective": ", ".join(f"{o.resolved_direction} {o.metric}" for o in spec.targets),
        **environment_tags(),
    }
    return Tracker(resolve_tracking_uri(opts.tracking_uri), spec.study, tags)

"""Trials as Ray tasks (``studyrunner run --ray local|auto|HOST:PORT``): Ray places and runs them,
studyrunner keeps everything else.

The driver asks Optuna for each trial and samples its parameters here, in this process; it keeps
as many trials in flight as the cluster can hold (never more than the study still needs), collects
each one as it ends (``ray.wait``, no batch barrier) and tells Optuna. What follows a trial (retry,
events, the parent run, the stopping rules) is the driver's ``finish_trial``, as in this process.

A task opens the same storage and builds ``optuna.trial.Trial`` on the asked trial, so that the
pruner judges each epoch from inside the task; it trains with an ``Objective`` whose own tracker
finds the study's parent run by its tags. Each trial run is tagged with where Ray put it.

Ray retries nothing (``max_retries=0``): a task that dies with its worker or node ends its trial
FAIL with the reason, its MLflow run ended, and the driver's retry re-queues the parameters; the
retry continues from the trial's last saved epoch. Ctrl-C or SIGTERM cancels every task in flight,
their trials INTERRUPTED and their runs KILLED, as in this process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import optuna

from studyrunner.config import TrainConfig, apply_overrides
from studyrunner.errors import StudyrunnerError, Terminated, signalled
from studyrunner.extras import require
from studyrunner.search.objective import DataSource, Objective, StudyEvents, failure_reason
from studyrunner.search.samplers import make_pruner
from studyrunner.search.space import suggest
from studyrunner.search.spec import SweepSpec
from studyrunner.states import Outcome, TrialRecord, TrialState
from studyrunner.stores import connect_timeout, open_storage
from studyrunner.track.machine import environment_tags

if TYPE_CHECKING:
    from studyrunner.search.driver import Stop
    from studyrunner.track.runs import Tracker

__all__ = [
    "RayCluster",
    "TrialJob",
    "TaskResult",
    "connect_cluster",
    "check_resources",
    "trial_resources",
    "run_trial_task",
    "ADDRESSES",
]

ADDRESSES = "local (a fresh Ray instance on this machine), auto (the cluster this machine belongs to) or HOST:PORT"
_WAIT_S = 1.0  # seconds one look for a finished task may take: Ctrl-C, heartbeats and dead workers are seen between looks
_CANCEL_S = 10.0  # seconds cancelled tasks get to end before their trials are recorded INTERRUPTED
COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"


class TrialHost(Protocol):
    """What the executor uses of the study driver."""

    study: optuna.Study
    objective: Objective
    tracker: Tracker | None
    events: StudyEvents
    target: int
    heartbeat: bool

    def finished(self) -> int: ...
    def limit(self, start: float, timeout: float | None) -> Stop | None: ...
    def finish_trial(self, trial: optuna.trial.FrozenTrial) -> Stop: ...
    def sweep_dead_workers(self) -> None: ...
    def queued(self) -> bool: ...


@dataclass(frozen=True)
class TrialJob:
    """What every task of a study is given (pickled once, shared by its tasks); paths absolute."""

    spec: SweepSpec
    base: TrainConfig  # train values and --set applied, not resolved: each trial resolves its own
    storage_url: str
    tracking_uri: str  # "none": not tracked
    run_tags: dict[str, str]  # the study's tags on every trial run (sampler, git commit, ...)
    target: int
    data_dir: str | None
    pruning: str | None  # the name of the multi-objective study's pruning study
    cwd: str  # the driver's folder: runs/ lands there wherever the node's disk has it
    cpus: float
    gpus: float
    checkpoints: str = ""  # the driver's $STUDYRUNNER_CHECKPOINTS, absolute ("": runs/checkpoints under cwd)


@dataclass(frozen=True)
class TaskResult:
    """How a task's trial ended, in plain data (an exception object may not unpickle in the driver)."""

    kind: str  # complete, pruned or failed
    values: list[float] | None = None
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def check_resources(cpus: float | None, gpus: float | None) -> None:
    """``--cpus-per-trial`` > 0 and ``--gpus-per-trial`` >= 0, whole above 1 (Ray splits one device, never several)."""
    for flag, value, least in (("--cpus-per-trial", cpus, "> 0"), ("--gpus-per-trial", gpus, ">= 0")):
        if value is None:
            continue
        if not (value > 0 if flag == "--cpus-per-trial" else value >= 0):
            raise StudyrunnerError(f"{flag} {value:g}: must be {least} (a share of one device per trial, e.g. 0.5)")
        if value > 1 and not float(value).is_integer():
            raise StudyrunnerError(f"{flag} {value:g}: a share above 1 must be a whole number (e.g. 0.5, 1 or 2)")


def trial_resources(spec: SweepSpec, cpus: float | None, gpus: float | None) -> tuple[float, float]:
    """CPUs and GPUs per trial: the flags, else the sweep's ``resources``."""
    check_resources(cpus, gpus)
    return (spec.resources.cpus if cpus is None else cpus), (spec.resources.gpus if gpus is None else gpus)


def connect_cluster(spec: SweepSpec, address: str, cpus: float | None, gpus: float | None, storage: str | None) -> RayCluster:
    """Ray started (``local``) or joined (``auto``, ``HOST:PORT``), or the instance this process
    already runs; refused when the tasks could not share the storage or no node can hold a trial."""
    need = trial_resources(spec, cpus, gpus)
    if address not in ("local", "auto") and not _host_port(address):
        raise StudyrunnerError(f"--ray {address!r}: give {ADDRESSES}")
    if storage and (storage.startswith("sqlite:///:memory:") or storage.rstrip("/") == "sqlite:"):
        raise StudyrunnerError("--ray needs a storage its tasks share; an in-memory SQLite database is not")
    ray = require("ray", "ray", "--ray")
    cluster = RayCluster(address, *need, started=not ray.is_initialized())
    if cluster.started:
        if _host_port(address):
            _check_listening(address)
        _init(ray, address)
    try:
        cluster.check_fits()
    except StudyrunnerError:
        cluster.close()
        raise
    return cluster


def _host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def _check_listening(address: str) -> None:
    """A head node answers at HOST:PORT (Ray itself would wait minutes for one that never does)."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=connect_timeout()).close()
    except OSError as exc:
        raise StudyrunnerError(
            f"--ray {address}: no Ray head node answers there within {connect_timeout():g} s ({exc.strerror or exc}); "
            "start one with `ray start --head --port PORT` or check the address"
        ) from None


def _init(ray: Any, address: str) -> None:
    """``ray.init`` without the dashboard, the usage report or worker output in the live view (it
    is in the session's logs); the SIGTERM handler it replaces is put back (SIGTERM ends the trials
    INTERRUPTED, not the process)."""
    previous = signal.getsignal(signal.SIGTERM)
    if address == "local":
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        # Ray turns token authentication on by itself for local and auto, never for an explicit address
        token = "; a cluster with token authentication also needs RAY_AUTH_MODE=token here" if _host_port(address) else ""
        raise StudyrunnerError(
            f"--ray {address}: no Ray cluster to use ({first[:300]}); start one with `ray start --head` or use --ray local{token}"
        ) from None
    finally:
        if threading.current_thread() is threading.main_thread() and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _absolute(url: str) -> str:
    """A store URL with its relative file path made absolute: tasks run in folders of their own."""
    for prefix in ("sqlite:///", "journal:", "file:"):
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(Path(url.removeprefix(prefix)).expanduser().resolve())
    if url.lower() != "none" and "://" not in url and not url.startswith("/"):  # an MLflow file store's folder
        return str(Path(url).expanduser().resolve())
    return url


@dataclass
class RayCluster:
    """Where the trials run; ``run`` drives them for one study."""

    address: str
    cpus: float
    gpus: float
    started: bool  # this process called ray.init (and disconnects, or stops its local instance, on close)
    notice: str = ""  # what the driver should know before the trials start (told through its events)
    _beaten: float = 0.0

    @property
    def ray(self) -> Any:
        return require("ray", "ray", "--ray")

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
            self.started = False

    def check_fits(self) -> None:
        """Refused when no node of a local instance can hold a trial; on a cluster, whose autoscaler
        may add a node for the queued trials, the driver says so before it waits."""
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        if any(r.get("CPU", 0) >= self.cpus and r.get("GPU", 0) >= self.gpus for r in nodes):
            return
        have = ", ".join(f"{r.get('CPU', 0):g} CPUs/{r.get('GPU', 0):g} GPUs" for r in nodes) or "no live node"
        text = f"no node of --ray {self.address} can hold a trial of {self.cpus:g} CPUs and {self.gpus:g} GPUs now ({have})"
        if self.address == "local":
            raise StudyrunnerError(f"{text}; lower resources.cpus/gpus in the sweep or --cpus-per-trial/--gpus-per-trial")
        self.notice = f"{text}: the trials wait until the cluster adds one"

    def calls_per_worker(self) -> int:
        """Trials one worker process runs (0: any number). A GPU trial gets a fresh process where a
        node has several GPUs (Ray's default): torch keeps the GPUs it saw first, and the next task may
        be given another. Where every node has at most one, every task is given that one, and the
        workers stay, with their loaded data, for later trials."""
        if not self.gpus:
            return 0
        return 0 if all(n.get("Resources", {}).get("GPU", 0) <= 1 for n in self.ray.nodes() if n.get("Alive")) else 1

    def slots(self) -> int:
        """Trials the cluster holds at once now (at least one: an autoscaler adds nodes for queued tasks)."""
        total = self.ray.cluster_resources()
        n = total.get("CPU", 0.0) / self.cpus
        if self.gpus:
            n = min(n, total.get("GPU", 0.0) / self.gpus)
        return max(1, int(n + 1e-9))

    def job(self, host: TrialHost) -> TrialJob:
        obj, tracker = host.objective, host.tracker
        return TrialJob(
            spec=obj.spec,
            base=obj.base,
            storage_url=_absolute(obj.storage_url),
            tracking_uri=_absolute(tracker.uri) if tracker is not None else "none",
            run_tags=dict(tracker.tags) if tracker is not None else {},
            target=host.target,
            data_dir=str(Path(obj.data.data_dir).resolve()) if obj.data.data_dir else None,
            pruning=obj.pruning.study_name if obj.pruning is not None else None,
            cwd=os.getcwd(),
            cpus=self.cpus,
            gpus=self.gpus,
            checkpoints=str(Path(moved).resolve()) if (moved := os.environ.get("STUDYRUNNER_CHECKPOINTS")) else "",
        )

    def run(self, host: TrialHost, timeout: float | None) -> Stop:
        """Trials until the driver's limit (target or timeout; trials in flight then finish), or a
        stop from ``finish_trial`` (the trials still in flight are then cancelled, INTERRUPTED)."""
        ray = self.ray
        job = ray.put(self.job(host))
        options = {"num_cpus": self.cpus, "num_gpus": self.gpus, "max_retries": 0, "max_calls": self.calls_per_worker()}
        task = ray.remote(**options)(run_trial_task)
        flight: dict[Any, optuna.Trial] = {}
        if self.notice:
            host.events.notice(self.notice)
        start = time.monotonic()
        try:
            while True:
                self._beat(host, flight)
                end = host.limit(start, timeout)
                if end is None:
                    self._fill(host, flight, lambda trial: task.remote(job, trial._trial_id))
                elif not flight:
                    return end
                ready, _ = ray.wait(list(flight), num_returns=1, timeout=_WAIT_S)
                for ref in ready:
                    stop = host.finish_trial(self._collect(host, ref, flight[ref]))
                    del flight[ref]
                    if stop:
                        self._abandon(host, flight, f"cancelled: the study stopped ({stop.text})"[:2000])
                        return stop
        except BaseException as exc:  # Ctrl-C, SIGTERM, or the driver failing: nothing is left RUNNING
            cause = _as_raised(exc)
            self._abandon(host, flight, _why_abandoned(cause))
            if cause is not exc:
                raise cause from None
            raise

    def _beat(self, host: TrialHost, flight: dict[Any, optuna.Trial]) -> None:
        """Heartbeats for the trials in flight, from here: the tasks beat for none, and a driver
        that dies leaves them stale for the next run to fail and re-queue. Then dead workers' trials."""
        if time.monotonic() - self._beaten < _WAIT_S:
            return
        self._beaten = time.monotonic()
        if host.heartbeat:
            for trial in flight.values():
                trial.storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
        host.sweep_dead_workers()

    def _fill(self, host: TrialHost, flight: dict[Any, optuna.Trial], submit: Callable[[optuna.Trial], Any]) -> None:
        """Ask and submit trials until the cluster is full or the study has what it needs in flight."""
        for _ in range(min(self.slots(), host.target - host.finished()) - len(flight)):
            if not host.queued():  # PBT: the next segments wait for the ones in flight
                return
            with warnings.catch_warnings():  # Optuna suggests heartbeats with optimize(); these beat from the driver
                warnings.simplefilter("ignore", UserWarning)
                trial = host.study.ask()
            try:
                sampled = suggest(trial, host.objective.spec, host.objective.base)  # the sampler runs here, in the driver
                flight[submit(trial)] = trial
            except BaseException as exc:  # never left RUNNING; an interruption here ends it INTERRUPTED
                outcome = Outcome.INTERRUPTED if isinstance(exc, KeyboardInterrupt) else Outcome.FAILED
                TrialRecord.write(trial, outcome=outcome, fail_reason=f"not submitted: {_why_abandoned(_as_raised(exc))}")
                host.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            host.events.trial_started(trial.number, sampled)

    def _collect(self, host: TrialHost, ref: Any, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
        """The finished task's trial told to Optuna; a task that died takes its trial with it: FAIL, run ended."""
        ray = self.ray
        try:
            result: TaskResult = ray.get(ref)
        except ray.exceptions.RayError as exc:
            reason = f"the Ray task died with its worker or node ({_first_line(exc)})"
            TrialRecord.write(trial, outcome=Outcome.FAILED, fail_reason=reason[:2000])
            frozen = host.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if host.tracker is not None:
                host.tracker.reap_trial(frozen.number, reason[:5000])
            return frozen
        for key, seconds in result.timings.items():
            host.objective.timings[key] = host.objective.timings.get(key, 0.0) + seconds
        return _tell(host.study, trial, result)

    def _abandon(self, host: TrialHost, flight: dict[Any, optuna.Trial], why: str) -> None:
        """Cancel the tasks in flight; a trial whose task ended first is told as it ended, the others
        end INTERRUPTED (re-queued when the study runs again) with their MLflow runs KILLED."""
        if not flight:
            return
        ray = self.ray
        for ref in flight:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        ready, _ = ray.wait(list(flight), num_returns=len(flight), timeout=_CANCEL_S)
        for ref, trial in list(flight.items()):
            if _fresh(trial).state.is_finished():  # told just before the interruption came
                continue
            frozen = self._collect(host, ref, trial) if ref in ready and _returned(ray, ref) else _interrupt(host, trial, why)
            host.finish_trial(frozen)
        flight.clear()


def _fresh(trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The trial as the storage holds it now (the task wrote to it from its own process)."""
    return trial.storage.get_trial(trial._trial_id)  # type: ignore[attr-defined, no-any-return]


def _returned(ray: Any, ref: Any) -> bool:
    """The task ended with a result of its own (not cancelled, not dead)."""
    try:
        ray.get(ref, timeout=0)
    except ray.exceptions.RayError:
        return False
    return True


def _interrupt(host: TrialHost, trial: optuna.Trial, why: str) -> optuna.trial.FrozenTrial:
    TrialRecord.write(trial, outcome=Outcome.INTERRUPTED, fail_reason=why)
    frozen = host.study.tell(trial, state=optuna.trial.TrialState.FAIL)
    run_id = TrialRecord.of(frozen.user_attrs).mlflow_run_id
    if host.tracker is not None:
        if run_id:
            host.tracker.end_trial(run_id, TrialState.INTERRUPTED, why, [], None, [])
        host.tracker.reap_trial(frozen.number, why, TrialState.INTERRUPTED)  # a run the task had no time to record
    return frozen


def _as_raised(exc: BaseException) -> BaseException:
    """The interruption as the signal handler raised it: Ray's wait turns the SIGTERM handler's
    Terminated into a plain KeyboardInterrupt."""
    if type(exc) is KeyboardInterrupt and signalled() == signal.SIGTERM:
        return Terminated()
    return exc


def _why_abandoned(exc: BaseException) -> str:
    if isinstance(exc, Terminated):
        return "terminated (SIGTERM)"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    return f"cancelled: the driver stopped ({failure_reason(exc)})"[:2000]


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or ["no message"])[0]
    return f"{type(exc).__name__}: {text}"[:500]


def _tell(study: optuna.Study, trial: optuna.Trial, result: TaskResult) -> optuna.trial.FrozenTrial:
    """Optuna told what the task's objective returned; a failure the objective never recorded (the
    task could not start it) gets its reason written first."""
    if result.kind == COMPLETE:
        return study.tell(trial, result.values)
    if result.kind == FAILED and TrialRecord.of(_fresh(trial).user_attrs).outcome is None:
        TrialRecord.write(trial, outcome=Outcome.FAILED, fail_reason=result.reason[:2000])
    state = optuna.trial.TrialState.PRUNED if result.kind == PRUNED else optuna.trial.TrialState.FAIL
    return study.tell(trial, state=state)


# --------------------------------------------------------------------------- inside a Ray task

# a worker process keeps its storages, trackers and loaded data for its later trials (Ray reuses
# workers, but for GPU trials on nodes of several GPUs: see RayCluster.calls_per_worker)
_STORAGES: dict[str, optuna.storages.BaseStorage] = {}
_TRACKERS: dict[tuple[str, str], Tracker] = {}
_DATA: dict[str | None, DataSource] = {}


def run_trial_task(job: TrialJob, trial_id: int) -> TaskResult:
    """Train the asked trial ``trial_id`` of ``job``'s study in this Ray worker; how it ended."""
    if os.path.isdir(job.cwd):  # the same disk as the driver: runs/ (checkpoints, resume states) is shared
        os.chdir(job.cwd)
    if job.checkpoints:
        os.environ["STUDYRUNNER_CHECKPOINTS"] = job.checkpoints
    try:
        objective, trial = _task_objective(job, trial_id)
    except Exception as exc:
        return TaskResult(FAILED, reason=f"the Ray task could not start the trial: {failure_reason(exc)}")
    try:
        value = objective(trial)
    except optuna.TrialPruned:
        return TaskResult(PRUNED, timings=dict(objective.timings))
    except Exception as exc:  # recorded on the trial by the objective already
        return TaskResult(FAILED, reason=failure_reason(exc), timings=dict(objective.timings))
    values = value if isinstance(value, list) else [value]
    return TaskResult(COMPLETE, [float(v) for v in values], timings=dict(objective.timings))


def _task_objective(job: TrialJob, trial_id: int) -> tuple[Objective, optuna.Trial]:
    """The trial on the shared storage (its pruner judges here; its parameters were sampled in the
    driver, so this study's sampler is never asked), and an Objective that tracks to the study's parent run."""
    ray = require("ray", "ray", "--ray")
    spec = job.spec
    if job.storage_url not in _STORAGES:
        _STORAGES[job.storage_url] = open_storage(job.storage_url, spec.max_retries)
    storage = _STORAGES[job.storage_url]
    quiet = optuna.samplers.RandomSampler()
    study = optuna.load_study(study_name=spec.study, storage=storage, sampler=quiet, pruner=make_pruner(spec))
    pruning = None
    if job.pruning:
        pruning = optuna.load_study(study_name=job.pruning, storage=storage, sampler=quiet, pruner=make_pruner(spec))
    data = _DATA.setdefault(job.data_dir, DataSource(job.data_dir))
    base = _task_base(job, bool(ray.get_gpu_ids()))
    objective = Objective(spec, base, data, _tracker(job), None, job.target, job.storage_url, pruning)
    objective.extra_tags = {
        "ray.node_id": str(ray.get_runtime_context().get_node_id()),
        "resources.cpus": f"{job.cpus:g}",
        "resources.gpus": f"{job.gpus:g}",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    return objective, optuna.trial.Trial(study, trial_id)


def _task_base(job: TrialJob, has_gpu: bool) -> TrainConfig:
    """The base config as this task runs it: torch threads as many as its CPUs (when the config
    names none), and device auto on the CPU when Ray gave the task no GPU (a GPU it did not reserve
    belongs to other tasks); with one, auto finds the GPU Ray made visible."""
    changes: dict[str, Any] = {}
    if job.base.threads == 0:
        changes["threads"] = max(1, int(job.cpus))
    if job.base.device == "auto" and not has_gpu:
        changes["device"] = "cpu"
    return apply_overrides(job.base, changes) if changes else job.base


def _tracker(job: TrialJob) -> Tracker | None:
    if job.tracking_uri.lower() == "none":
        return None
    key = (job.tracking_uri, job.spec.study)
    if key not in _TRACKERS:
        from studyrunner.track.runs import Tracker

        _TRACKERS[key] = Tracker(job.tracking_uri, job.spec.study, {**job.run_tags, **environment_tags()})  # this node's machine
    return _TRACKERS[key]

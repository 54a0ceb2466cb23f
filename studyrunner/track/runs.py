"""MLflow tracking: one experiment per study, one parent run per study, one nested run per trial.

The only module that imports mlflow. Run status tells the truth: a COMPLETE trial's run ends
FINISHED, a PRUNED one KILLED, a DIVERGED or FAILed one FAILED; the final state is also the tag
``state``. Per-epoch metrics go in one ``log_batch`` call per epoch (step = epoch).
"""

from __future__ import annotations

import logging
import math
import os
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from studyrunner import plots
from studyrunner.config import TrainConfig, config_to_dict, flatten
from studyrunner.extras import available
from studyrunner.states import DEAD_WORKER_STATUS, TrialState
from studyrunner.track.trialfiles import ARTIFACT_DIR, TRIAL_FILES, Outbox, fetch_state

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from studyrunner.engine.fit import EpochRecord, FitResult

__all__ = ["Tracker", "quiet_mlflow", "metric_key", "git_commit", "prepare_store", "ROLE", "STUDY"]

ROLE, STUDY = "studyrunner.role", "studyrunner.study"  # tags that tell a study's parent run from its trials
EXPERIMENT_KIND = "mlflow.experimentKind"
SYSTEM_METRICS_ENV = "STUDYRUNNER_SYSTEM_METRICS_S"
TRAINING_KIND = "custom_model_development"  # a study's experiment holds training runs, not GenAI traces
PATH_KEYS = ("out_dir", "data.path", "data.cache_dir")  # per-trial or per-machine paths: tags, not params


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside an SQLite tracking store (``.../mlartifacts``); servers choose their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _ms() -> int:
    return int(time.time() * 1000)


def quiet_mlflow() -> None:
    """MLflow's own lines would interleave with the trial lines: its "Creating initial MLflow
    database tables..." and schema-migration logs, and with a tracking server a "View run ... at"
    and "View experiment at" pair on stdout for every trial. studyrunner prints where to look once."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per artifact download
    for name in ("mlflow.store.db.utils", "mlflow.store.db", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def prepare_store(uri: str) -> None:
    """Create the tracking store's tables (MLflow's schema migrations) now, before several
    processes race to do it on the same fresh SQLite file."""
    from mlflow.tracking import MlflowClient

    quiet_mlflow()
    MlflowClient(uri).search_experiments(max_results=1)


def epoch_history(uri: str, run_id: str) -> list[dict[str, Any]]:
    """A trial run's per-epoch records rebuilt from its metric history (step = epoch); empty when
    the store or run cannot be read. Non-finite values were never logged: those epochs lack them."""
    from dataclasses import fields

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from studyrunner.engine.fit import EpochRecord

    keys = [f.name for f in fields(EpochRecord)]  # what log_epoch logged, step = epoch
    by_epoch: dict[int, dict[str, Any]] = {}
    try:
        client = MlflowClient(uri)
        for key in keys[1:]:
            for m in client.get_metric_history(run_id, key):
                by_epoch.setdefault(m.step, {"epoch": m.step})[key] = m.value
    except (MlflowException, OSError):
        return []
    return [{k: r.get(k) for k in keys} for _, r in sorted(by_epoch.items())]


def read_confusion(uri: str, run_id: str) -> dict[str, Any] | None:
    """A trial run's validation confusion matrix as ``Tracker.log_confusion`` stored it:
    ``{"classes": [...], "matrix": [[...]]}`` ([true][predicted]); None when the store, the run or
    the artifact cannot be read."""
    import json
    import tempfile

    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    before = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
    os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"  # a report prints no download bar per study
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = MlflowClient(uri).download_artifacts(run_id, "confusion_matrix.json", tmp)
            found = json.loads(Path(path).read_text())
        return {"classes": [str(c) for c in found["classes"]], "matrix": [[int(v) for v in row] for row in found["matrix"]]}
    except (MlflowException, OSError, ValueError, KeyError, TypeError):
        return None
    finally:
        if before is None:
            os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, None)
        else:
            os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = before


def newest_experiment(uri: str, study: str | None = None) -> str | None:
    """The id of ``study``'s experiment, else of the newest study's; None when there is none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if study:
        exp = client.get_experiment_by_name(study)
        return None if exp is None else str(exp.experiment_id)
    found = client.search_experiments(
        filter_string=f"tags.`{EXPERIMENT_KIND}` = '{TRAINING_KIND}'", order_by=["creation_time DESC"], max_results=1
    )
    return str(found[0].experiment_id) if found else None


def metric_key(name: str) -> str:
    """``name`` with every character MLflow refuses in a metric key (class names can hold any)
    replaced by ``_``: letters, digits, ``_ - . : /`` and spaces are kept."""
    return re.sub(r"[^\w\-.: /]", "_", name)


class Tracker:
    """Logs a study to MLflow through ``MlflowClient`` (no global active-run state)."""

    def __init__(self, tracking_uri: str, study: str, tags: Mapping[str, str] | None = None) -> None:
        from mlflow.tracking import MlflowClient

        quiet_mlflow()
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.study = study
        self.tags = dict(tags or {})
        self.experiment_id = self._experiment()
        self.parent_id = self._parent()
        self._monitors: dict[str, Any] = {}  # trial run id -> its system-metrics monitor
        self._outbox: Outbox | None = None
        self._sent: dict[tuple[str, str], tuple[int, int]] = {}  # (run, file) -> (mtime_ns, size) last queued

    def _experiment(self) -> str:
        """The study's experiment; two workers creating it at once both end up with the same one."""
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.study)
        if exp:
            return str(exp.experiment_id)
        try:
            kind = {EXPERIMENT_KIND: TRAINING_KIND}
            return str(self.client.create_experiment(self.study, artifact_location=_artifact_root(self.uri), tags=kind))
        except MlflowException:  # created by another worker in the meantime
            exp = self.client.get_experiment_by_name(self.study)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def _find_parents(self) -> list[Any]:
        query = f"tags.`{ROLE}` = 'parent' and tags.`{STUDY}` = '{self.study}'"
        return list(self.client.search_runs([self.experiment_id], query, order_by=["attributes.start_time ASC"]))

    def _parent(self) -> str:
        """The study's parent run: found again on resume (set RUNNING), else created. When workers
        race to create it, the earliest run wins and the others delete theirs."""
        found = self._find_parents()
        if not found:
            run = self.client.create_run(
                self.experiment_id, run_name=self.study, tags={ROLE: "parent", STUDY: self.study, **self.tags}
            )
            found = self._find_parents()
            if found and found[0].info.run_id != run.info.run_id:
                self.client.delete_run(run.info.run_id)
        run_id = str(found[0].info.run_id)
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def start_trial(
        self,
        number: int,
        config: TrainConfig,
        sampled: Mapping[str, Any],
        tags: Mapping[str, str],
        classes: Sequence[str] = (),
    ) -> str:
        """A nested run for trial ``number`` with every resolved config value as a param and its
        class names (tag ``classes``, artifact ``classes.json``)."""
        import json

        from mlflow.entities import Param, RunTag

        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number}",
            tags={
                "mlflow.parentRunId": self.parent_id,
                ROLE: "trial",
                STUDY: self.study,
                "trial_number": str(number),
                "state": "RUNNING",
                **({"cuda_visible_devices": os.environ["CUDA_VISIBLE_DEVICES"]} if "CUDA_VISIBLE_DEVICES" in os.environ else {}),
                **self.tags,
                **tags,
                **({"classes": ", ".join(classes)[:5000]} if classes else {}),
            },
        )
        flat = flatten(config_to_dict(config))  # where a trial writes is a tag: as a param it would top every comparison
        params = [Param(k, str(v)) for k, v in flat.items() if k not in PATH_KEYS]
        sampled_tags = [RunTag(f"sampled.{k}", str(v)) for k, v in sampled.items()]
        sampled_tags += [RunTag(k, str(flat[k])) for k in PATH_KEYS if flat.get(k)]
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i : i + 100], tags=sampled_tags if i == 0 else ())
        self.client.log_text(run.info.run_id, yaml.safe_dump(config_to_dict(config), sort_keys=False), "config.yaml")
        if classes:
            self.client.log_text(run.info.run_id, json.dumps(list(classes)), "classes.json")
        self._watch(str(run.info.run_id))
        return str(run.info.run_id)

    def _watch(self, run_id: str) -> None:
        """MLflow's system metrics for the trial's run (CPU, memory, disk, network; GPU utilisation
        and memory through NVML where there is a GPU), every $STUDYRUNNER_SYSTEM_METRICS_S seconds
        (default 5; 0 = off)."""
        seconds = float(os.environ.get(SYSTEM_METRICS_ENV) or 5)
        if seconds <= 0:
            return
        if not available("psutil"):  # MLflow's monitor needs it
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # no INFO line per trial
        monitor = SystemMetricsMonitor(  # type: ignore[no-untyped-call]
            run_id, sampling_interval=seconds, samples_before_logging=1, tracking_uri=self.uri
        )
        monitor.start()  # type: ignore[no-untyped-call]
        self._monitors[run_id] = monitor

    def _unwatch(self, run_id: str) -> None:
        monitor = self._monitors.pop(run_id, None)
        if monitor is not None:
            monitor.finish()

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            self._outbox = Outbox()
        return self._outbox

    def log_epoch(self, run_id: str, record: EpochRecord, prefix: str = "") -> None:
        """One epoch's metrics in one call, step = epoch, made by the outbox's thread."""
        from mlflow.entities import Metric

        ts, step = _ms(), record.epoch
        metrics = [
            Metric(f"{prefix}{k}", float(v), ts, step)
            for k, v in asdict(record).items()
            if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)
        ]
        self.outbox.put(run_id, lambda: self.client.log_batch(run_id, metrics=metrics, synchronous=True))

    def upload(self, run_id: str, folder: str | Path, names: Sequence[str] | None = None) -> None:
        """Queue the upload of the trial's files in ``folder`` that changed since they were last
        queued (``names``, default every checkpoint, resume state and history file there) to the
        run's ``checkpoint/`` artifacts."""
        here = Path(folder)
        found = [here / n for n in (names if names is not None else TRIAL_FILES)]
        if names is None:
            found += sorted(here.glob("state-seed*.pt"))
        for path in found:
            try:
                st = path.stat()
            except OSError:
                continue
            key, stamp = (run_id, path.name), (st.st_mtime_ns, st.st_size)
            if self._sent.get(key) == stamp:
                continue
            self._sent[key] = stamp
            self.outbox.put(run_id, self._uploader(run_id, str(path)), key=path.name)

    def _uploader(self, run_id: str, path: str) -> Callable[[], None]:
        def upload() -> None:
            try:
                self.client.log_artifact(run_id, path, ARTIFACT_DIR)
            except Exception:
                if os.path.exists(path):
                    raise  # retried by the outbox
                # else the trial removed it meanwhile (a finished trial's resume state): nothing to deliver

        return upload

    def flush(self, run_id: str) -> str:
        """Wait for the run's queued metrics and uploads: "" when all were delivered, else why not."""
        return self.outbox.flush(run_id) if self._outbox is not None else ""

    def fetch_state(self, origin: int, folder: str | Path) -> tuple[str, int]:
        """An earlier attempt's uploaded resume state and checkpoints, into ``folder`` when it has
        none of its own (``trialfiles.fetch_state``)."""
        return fetch_state(self.client, self.experiment_id, self.study, origin, Path(folder))

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.outbox.put(run_id, lambda: self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()]))

    def end_trial(
        self,
        run_id: str,
        state: TrialState,
        reason: str,
        values: Sequence[float],
        result: FitResult | None,
        history: Sequence[EpochRecord],
    ) -> None:
        """Final metrics, state tag, learning-curve PNG, confusion matrix, and the run's terminal
        status, after the queued epochs and uploads (an undelivered one is named in the reason)."""
        from mlflow.entities import Metric, RunTag

        undelivered = self.flush(run_id)
        if undelivered:
            reason = f"{reason}; not all of the run's metrics and files reached the tracking store ({undelivered})".lstrip("; ")
        ts = _ms()
        keys: dict[str, int] = {}  # two names that clean to the same key get _2, _3, ...
        final = []
        for k, v in _final_metrics(values, result, history).items():
            key = metric_key(k)
            keys[key] = keys.get(key, 0) + 1
            final.append(Metric(key if keys[key] == 1 else f"{key}_{keys[key]}", v, ts, 0))
        tags = [RunTag("state", state.value)] + ([RunTag("reason", reason[:5000])] if reason else [])
        self.client.log_batch(run_id, metrics=final, tags=tags)
        if history:
            self._log_figure(run_id, plots.learning_curves({"seed 0": [asdict(r) for r in history]}), "learning_curves.png")
        if result and result.val_confusion:
            self.log_confusion(run_id, result.classes, result.val_confusion)
        self._unwatch(run_id)
        self.client.set_terminated(run_id, state.mlflow_status)

    def _log_figure(self, run_id: str, fig: Figure, name: str) -> None:
        try:
            self.client.log_figure(run_id, fig, name)
        finally:
            plots.close(fig)

    def log_confusion(self, run_id: str, classes: list[str], matrix: list[list[int]]) -> None:
        """Class names, the validation confusion matrix (JSON, [true][predicted]) and its PNG."""
        import json

        self.client.log_text(run_id, json.dumps({"classes": classes, "matrix": matrix}), "confusion_matrix.json")
        self._log_figure(run_id, plots.confusion_figure(classes, matrix), "confusion_matrix.png")

    def reap(self, run_id: str, reason: str, state: TrialState = TrialState.FAIL) -> None:
        """End a run left RUNNING by a dead worker: KILLED, tagged with the state and the reason."""
        from mlflow.entities import RunTag

        if self.client.get_run(run_id).info.status != "RUNNING":
            return
        self.client.log_batch(run_id, tags=[RunTag("state", state.value), RunTag("reason", reason)])
        self.client.set_terminated(run_id, DEAD_WORKER_STATUS)

    def reap_trial(self, number: int, reason: str, state: TrialState = TrialState.FAIL) -> None:
        """End every run of trial ``number`` still RUNNING, found by its tags: a worker killed
        between creating the run and recording its id in the trial leaves one the trial does not name."""
        query = (
            f"tags.`mlflow.parentRunId` = '{self.parent_id}' and tags.trial_number = '{number}' and attributes.status = 'RUNNING'"
        )
        for run in self.client.search_runs([self.experiment_id], query):
            self.reap(str(run.info.run_id), reason, state)

    def update_parent(self, metrics: Mapping[str, float], params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        """Best value, best parameters (as tags, they change as the study goes) and counts by state."""
        from mlflow.entities import Metric, RunTag

        ts = _ms()
        self.client.log_batch(
            self.parent_id,
            metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
            tags=[RunTag(k, str(v)) for k, v in {**tags, **{f"best.{k}": v for k, v in params.items()}}.items()],
        )

    def close(self, status: str = "FINISHED") -> None:
        if self._outbox is not None:
            self._outbox.flush("")
        for run_id in list(self._monitors):
            self._unwatch(run_id)
        self.client.set_terminated(self.parent_id, status)


def _final_metrics(values: Sequence[float], result: FitResult | None, history: Sequence[EpochRecord]) -> dict[str, float]:
    """A trial run's summary metrics: the objective value (mean and sd over seeds), the first
    seed's test and best-validation figures, epochs run and per-class validation accuracy."""
    metrics: dict[str, float | None] = {}
    if values:
        metrics["value"] = statistics.fmean(values)
        metrics["value_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    if result:
        metrics.update(test_acc=result.test_acc, test_loss=result.test_loss, best_val_acc=result.best_val_acc)
        metrics["best_epoch"] = float(result.best_epoch)
        metrics.update({f"val_acc_{c}": a for c, a in (result.per_class_val_acc if result.val_confusion else {}).items()})
    if history:
        metrics["epochs_run"] = float(len(history))
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}

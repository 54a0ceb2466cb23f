"""Where a trial's files live: written locally by the engine, uploaded to the trial run's MLflow
artifacts, fetched back before a resume or a use on another machine.

The local folder ``runs/checkpoints/STUDY/trial-N`` is a cache; the artifact store (the folder
beside an SQLite tracking store, or a tracking server's artifact proxy, ``mlflow server
--serve-artifacts``) is the source of truth. A trial run's artifact folder ``checkpoint/`` holds
``best.pt``, ``last.pt``, the resume state ``state-seedK.pt`` and ``history.json``.

Uploads and the per-epoch metrics go through one background thread (``Outbox``), in order, so
training never waits on the tracking server; a call that fails is retried until
$STUDYRUNNER_UPLOAD_RETRY_S (default 300 s) has passed, and ``flush`` says what could not be
delivered. A file that changed twice before its upload is uploaded once, as it is then.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ARTIFACT_DIR",
    "Outbox",
    "trial_folder",
    "upload_retry_s",
    "fetch_state",
    "fetch_checkpoint",
    "TRIAL_FILES",
]

ARTIFACT_DIR = "checkpoint"  # a trial run's artifact folder for its files
TRIAL_FILES = ("best.pt", "last.pt", "history.json")  # besides the resume state, state-seedK.pt
CHECKPOINT_ROOT = Path("runs/checkpoints")  # $STUDYRUNNER_CHECKPOINTS moves it (a scratch disk, a benchmark's own folder)
FETCHED_ROOT = Path("runs/artifacts")  # files fetched for use here (predict, train study:NAME, reports)


def trial_folder(study: str, origin: int) -> Path:
    """The local folder of a trial's files; a retry (``origin`` = its first attempt) shares it."""
    root = Path(os.environ.get("STUDYRUNNER_CHECKPOINTS") or CHECKPOINT_ROOT)
    return root.resolve() / study / f"trial-{origin}"


def upload_retry_s() -> float:
    return float(os.environ.get("STUDYRUNNER_UPLOAD_RETRY_S", "300"))


def _attempt(call: Callable[[], Any], retry_s: float) -> str:
    """Run ``call`` until it succeeds or ``retry_s`` has passed: "" or what went wrong. A file gone
    before its upload is not an error: the trial removed it (a finished trial's resume state)."""
    deadline, pause = time.monotonic() + retry_s, 0.5
    while True:
        try:
            call()
            return ""
        except FileNotFoundError:
            return ""
        except Exception as exc:
            if time.monotonic() + pause > deadline:
                return f"{type(exc).__name__}: {exc}"[:500]
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


class Outbox:
    """The tracking calls of a process's trial runs, made in order by one daemon thread."""

    def __init__(self, retry_s: float | None = None) -> None:
        self.retry_s = upload_retry_s() if retry_s is None else retry_s
        self._queue: queue.Queue[tuple[str, str, Callable[[], Any]]] = queue.Queue()
        self._lock = threading.Lock()
        self._pending: set[tuple[str, str]] = set()  # (run, file) uploads not started yet
        self._errors: dict[str, str] = {}  # run -> the first call that could not be delivered
        self.busy_s = 0.0  # seconds the thread spent on calls (what the training loop did not wait for)
        threading.Thread(target=self._work, daemon=True, name="studyrunner-outbox").start()

    def put(self, run_id: str, call: Callable[[], Any], key: str = "") -> None:
        """Queue ``call`` for ``run_id``; with ``key`` (a file name), only when that file's upload
        is not already waiting: the waiting one will read the newest file."""
        with self._lock:
            if run_id in self._errors:  # that run is already incomplete: its trial ends FAIL and is retried
                return
            if key:
                if (run_id, key) in self._pending:
                    return
                self._pending.add((run_id, key))
        self._queue.put((run_id, key, call))

    def _work(self) -> None:
        while True:
            run_id, key, call = self._queue.get()
            try:
                with self._lock:
                    self._pending.discard((run_id, key))
                    broken = run_id in self._errors
                if not broken:
                    start = time.perf_counter()
                    error = _attempt(call, self.retry_s)
                    self.busy_s += time.perf_counter() - start
                    if error:
                        with self._lock:
                            self._errors.setdefault(run_id, error)
            finally:
                self._queue.task_done()

    def flush(self, run_id: str) -> str:
        """Wait until every queued call has been made: "" when all of ``run_id``'s were
        delivered, else the first error."""
        self._queue.join()
        with self._lock:
            return self._errors.pop(run_id, "")


def _download(client: Any, run_id: str, names: Sequence[str], folder: Path) -> list[str]:
    """``names`` of ``run_id``'s ``checkpoint/`` artifacts copied into ``folder``: the ones it had."""
    import tempfile

    from studyrunner.files import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    got = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            data = Path(client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{name}", tmp)).read_bytes()
            atomic_write(folder / name, _writer(data))
            got.append(name)
    return got


def _writer(data: bytes) -> Callable[[Path], object]:
    return lambda dest: dest.write_bytes(data)


def _listing(client: Any, run_id: str) -> list[str]:
    from mlflow.exceptions import MlflowException

    try:
        return [Path(f.path).name for f in client.list_artifacts(run_id, ARTIFACT_DIR) if not f.is_dir]
    except (MlflowException, OSError):
        return []


def fetch_state(client: Any, experiment_id: str, study: str, origin: int, folder: Path) -> tuple[str, int]:
    """Before a retry resumes on a machine that lacks its files: the resume state (and checkpoints)
    of the newest earlier attempt of trial ``origin`` that uploaded any, copied into ``folder``.
    Returns the run it came from ("" when none had state, or the local folder has its own) and how
    many files were copied."""
    if any(folder.glob("state-seed*.pt")):
        return "", 0  # this machine ran it: its own state is as new as the uploaded one, or newer
    query = f"tags.`studyrunner.study` = '{study}' and tags.origin = '{origin}'"
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=20)
    for run in runs:
        names = _listing(client, run.info.run_id)
        if any(n.startswith("state-seed") for n in names):
            wanted = [n for n in names if n.startswith("state-seed") or n in TRIAL_FILES]
            return str(run.info.run_id), len(_download(client, run.info.run_id, wanted, folder))
    return "", 0


def fetch_checkpoint(uri: str, run_id: str, name: str = "best.pt") -> str:
    """A trial run's checkpoint file, fetched from its artifacts into ``runs/artifacts/RUN/``
    (reused when already there); "" when the store or the file cannot be reached."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar for one file
    dest = FETCHED_ROOT.resolve() / run_id / name
    if dest.is_file():
        return str(dest)
    try:
        _download(MlflowClient(uri), run_id, [name], dest.parent)
    except (MlflowException, OSError):
        return ""
    return str(dest)

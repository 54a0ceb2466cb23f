"""The browsers' side of a study: the MLflow UI on the tracking store and optuna-dashboard on the
Optuna storage, started as child processes bound to one host (127.0.0.1 by default).

The MLflow UI runs one worker and no job runner (its job consumers serve GenAI features a study
never uses, and cost a process and ~300 MB each). Its link opens the "Model training" view: MLflow
3 otherwise lands every experiment on its GenAI overview.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from studyrunner.errors import StudyrunnerError
from studyrunner.extras import available

#: MLflow 3's switch between its GenAI and model-training pages, read from the link's query.
TRAINING_VIEW = "workflowType=machine_learning"


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    probe: str  # a URL that answers 200 once the server is up
    link: str  # what the user opens
    store: str


def mlflow_ui(uri: str, host: str, port: int, study: str | None = None) -> Server:
    """The link opens ``study``'s runs (else the newest study's), trials nested under the study's
    run; the experiment list when the store holds no study yet."""
    from studyrunner.track.runs import newest_experiment

    base = f"http://{host}:{port}"
    found = newest_experiment(uri, study)
    if study and found is None:
        raise StudyrunnerError(f"--study {study}: the tracking store {uri} has no experiment of that name")
    page = f"{base}/#/experiments/{found}/runs?{TRAINING_VIEW}" if found else f"{base}/#/experiments?{TRAINING_VIEW}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return Server("MLflow UI", [*command, "--workers", "1"], env, f"{base}/health", page, uri)


def optuna_dashboard(storage: str, host: str, port: int) -> Server:
    if not available("optuna_dashboard"):
        raise StudyrunnerError("--dashboard needs optuna-dashboard: pip install optuna-dashboard")
    base = f"http://{host}:{port}"
    code = "import sys; from optuna_dashboard._cli import main; sys.exit(main())"
    if storage.startswith("grpc:"):  # optuna-dashboard's command line takes database URLs only: give it the proxy's client
        code = (
            "import sys; from optuna_dashboard import run_server; from studyrunner.stores import open_storage; "
            "run_server(open_storage(sys.argv[1]), host=sys.argv[3], port=int(sys.argv[5]))"
        )
    command = [sys.executable, "-c", code, storage, "--host", host, "--port", str(port), "--quiet"]
    command += ["--server", "wsgiref"]  # one process; gunicorn, when installed, would add a master and a worker
    return Server("optuna-dashboard", command, dict(os.environ), f"{base}/api/meta", f"{base}/dashboard/", storage)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(servers: list[Server], say: Callable[[str], None], ready_s: float = 120.0) -> int:
    """Start every server, say one line each once it answers, then wait until one stops or Ctrl-C.
    Returns the exit code of the first to stop (0 on Ctrl-C); every child is stopped on the way out."""
    signal.signal(signal.SIGTERM, _interrupt)  # a terminated `ui` stops its servers too, like Ctrl-C
    procs = [subprocess.Popen(s.command, env=s.env, stdout=subprocess.DEVNULL) for s in servers]
    try:
        for server, proc in zip(servers, procs, strict=True):
            _wait_ready(server, proc, ready_s)
            say(f"{server.name:<17} {server.link}   ({server.store})")
        say("Ctrl-C stops " + ("them" if len(servers) > 1 else "it"))
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return next(p.returncode for p in procs if p.returncode is not None)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(procs)


def _wait_ready(server: Server, proc: subprocess.Popen[bytes], ready_s: float) -> None:
    deadline = time.monotonic() + ready_s
    while not _answers(server.probe):
        if proc.poll() is not None:
            raise StudyrunnerError(f"{server.name} stopped at start (exit {proc.returncode}); its messages are above")
        if time.monotonic() > deadline:
            raise StudyrunnerError(f"{server.name} did not answer on {server.probe} within {ready_s:.0f} s")
        time.sleep(0.3)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def artifact_server(root: Path, host: str = "127.0.0.1", ready_s: float = 120.0) -> Iterator[str]:
    """A throw-away ``mlflow server --serve-artifacts`` (SQLite backend and artifact folder under
    ``root``) for a benchmark: its URL while the block runs, stopped after."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        port = int(sock.getsockname()[1])
    base = f"http://{host}:{port}"
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes (GenAI features)
    server = Server("mlflow server", [*command, "--serve-artifacts"], env, f"{base}/health", base, str(root))
    proc = subprocess.Popen(server.command, env=server.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(server, proc, ready_s)
        yield base
    finally:
        _stop([proc])

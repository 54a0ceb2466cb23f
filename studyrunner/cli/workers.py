"""``studyrunner run --jobs N``: N local worker processes on one study, torch threads divided.

Each worker is an ordinary ``studyrunner run`` process on the same storage (what a worker on
another machine runs too); this parent starts them, shows the study's progress from the storage
and waits. Worker output goes to ``runs/workers/<study>-w<i>.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from studyrunner.errors import StudyrunnerError
from studyrunner.narrative.spec import is_narrative, load_narrative
from studyrunner.search.spec import load_sweep
from studyrunner.stores import open_storage, resolve_storage, resolve_tracking_uri, setup_lock

__all__ = ["run_workers", "worker_command"]


def worker_command(
    sweep: Path,
    n_trials: int | None,
    timeout: float | None,
    scale: str,
    sets: list[str],
    storage: str,
    tracking_uri: str,
    data_dir: str | None,
    threads: int,
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "studyrunner",
        "run",
        str(sweep),
        "--storage",
        storage,
        "--tracking-uri",
        tracking_uri,
        "--scale",
        scale,
        "--set",
        f"threads={threads}",
    ]
    cmd += [x for s in sets for x in ("--set", s)]
    cmd += ["--n-trials", str(n_trials)] if n_trials else []
    cmd += ["--timeout", str(timeout)] if timeout else []
    cmd += ["--data-dir", data_dir] if data_dir else []
    return cmd


def run_workers(
    sweep: Path,
    jobs: int,
    n_trials: int | None,
    timeout: float | None,
    scale: str,
    sets: list[str],
    storage: str | None,
    tracking_uri: str | None,
    data_dir: str | None,
    console: Console,
) -> int:
    """Start ``jobs`` workers, report progress until they end; the exit code is the worst of theirs."""
    if storage and storage.startswith("sqlite:///:memory:"):
        raise StudyrunnerError("--jobs needs a storage the workers share; an in-memory SQLite database is not")
    name = load_narrative(sweep).study if is_narrative(sweep) else load_sweep(sweep).study  # validate before starting
    url, uri = resolve_storage(storage), resolve_tracking_uri(tracking_uri)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    _prepare_stores(url, uri)
    logs = Path("runs/workers")
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(jobs):
        log = open(logs / f"{name}-w{i}.log", "w")  # noqa: SIM115 - closed when the worker ends
        env = {**os.environ, "STUDYRUNNER_WORKER": str(i), "COLUMNS": "120"}
        cmd = worker_command(sweep, n_trials, timeout, scale, sets, url, uri, data_dir, threads)
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    console.print(f"{jobs} workers on {url} ({threads} torch threads each); logs in {logs}/{name}-w*.log")
    last = ""
    while any(p.poll() is None for p, _ in procs):
        time.sleep(2)
        line = _progress_line(url, name)
        if line and line != last:
            console.print(line, highlight=False)
            last = line
    for _, log in procs:
        log.close()
    codes = [p.returncode for p, _ in procs]
    console.print(f"workers ended with exit codes {codes}; {_progress_line(url, name)}", highlight=False)
    return max(codes, key=abs)


def _prepare_stores(url: str, uri: str) -> None:
    """Check both stores, then create the Optuna tables and run MLflow's schema migrations once,
    under the setup lock, before the workers start."""
    from studyrunner.search.driver import check_stores
    from studyrunner.track.runs import prepare_store

    with setup_lock():
        check_stores(url, uri)
        open_storage(url)
        if uri.lower() != "none":
            prepare_store(uri)


def _progress_line(url: str, name: str) -> str:
    """'STUDY: COMPLETE 3, RUNNING 2' over the study (or every step of a narrative study)."""
    import optuna

    from studyrunner.states import count_states

    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(url, include_best_trial=False)]
        trials = [
            t
            for n in names
            if n == name or n.startswith(f"{name}.")
            for t in optuna.load_study(study_name=n, storage=url).get_trials(deepcopy=False)
        ]
    except Exception:  # the workers may not have created the study yet
        return ""
    return f"{name}: " + ", ".join(f"{k.value} {v}" for k, v in sorted(count_states(trials).items()))

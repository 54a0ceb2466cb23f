"""Study storage under many workers: straight on PostgreSQL against through the gRPC storage proxy.

Each simulated worker is a thread with its own storage client (an RDBStorage with Optuna's default
connection pool, or a GrpcStorageProxy), in a few spawned processes, and repeats a trial's storage
traffic without the training: ask, ten ``report`` calls and tell, on a study that already holds
finished trials. Per mode and worker count: cycles per second, the latency of ask, the errors, and
the most connections the database server held, read from ``pg_stat_activity`` by a monitor.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from studyrunner.errors import StudyrunnerError
from studyrunner.stores import StoreError, check_storage

__all__ = ["StorageRow", "storage_bench", "storage_ratios", "parse_workers", "row_line", "SETTINGS"]

SETTINGS: dict[str, Any] = {
    # three worker counts around PostgreSQL's default max_connections (100): below, near and above it
    "workers": "32,64,128",  # simulated workers per run
    "processes": 4,  # spawned processes the worker threads are spread over: more than the cores, fewer than the threads
    "seed_trials": 1000,  # finished trials in each run's fresh study before the clock starts: a study well under way
    "duration_s": 8.0,  # measured seconds per mode and worker count: six runs, about 3 minutes on 2 CPU cores
    "cycles": 0,  # or a fixed number of cycles per worker (0: run for duration_s)
    "reports": 10,  # trial.report calls per cycle: a ten-epoch trial's intermediate values
    "sample_s": 0.2,  # how often the monitor counts the server's connections
    "retry_s": 0.5,  # a worker whose cycle failed waits this long before the next, as a retrying worker would
    "ready_s": 300.0,  # the most the workers may take to connect and read the seeded study
    "seed_threads": 4,  # clients that seed the study together
}


@dataclass(frozen=True)
class StorageRow:
    """One mode at one worker count."""

    mode: str  # "direct" (each worker on the database) or "proxy" (each worker through the gRPC proxy)
    workers: int
    cycles_per_s: float  # finished ask + reports + tell cycles per second, all workers together
    ask_p50_ms: float
    ask_p99_ms: float
    errors: int  # failed cycles (a worker that cannot connect fails each cycle it tries)
    peak_connections: int  # the most client connections the server held to the study's database
    first_error: str = ""


def parse_workers(text: str) -> list[int]:
    """``--workers 32,64,128``: positive counts."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise StudyrunnerError(f"--workers {text}: give positive worker counts, comma-separated, e.g. --workers 32,64,128")
    return [int(p) for p in parts]


def row_line(row: StorageRow) -> str:
    """The line a run prints: fixed words around each figure, so that it reads and parses."""
    line = (
        f"{row.mode:<6} {row.workers:>4} workers: {row.cycles_per_s:8.1f} cycles/s  ask p50 {row.ask_p50_ms:7.1f} ms  "
        f"p99 {row.ask_p99_ms:7.1f} ms  errors {row.errors:>5}  peak connections {row.peak_connections:>4}"
    )
    return f"{line}  (first error: {row.first_error})" if row.first_error else line


def storage_ratios(rows: list[StorageRow]) -> list[str]:
    """Proxy against direct at each worker count: one line each."""
    by = {(r.mode, r.workers): r for r in rows}
    lines = []
    for n in sorted({r.workers for r in rows}):
        d, p = by.get(("direct", n)), by.get(("proxy", n))
        if d is None or p is None:
            continue
        lines.append(
            f"proxy/direct at {n:>4} workers: cycles/s {_ratio(p.cycles_per_s, d.cycles_per_s)}, "
            f"ask p50 {_ratio(p.ask_p50_ms, d.ask_p50_ms)}, p99 {_ratio(p.ask_p99_ms, d.ask_p99_ms)}, "
            f"peak connections {_ratio(p.peak_connections, d.peak_connections)} ({p.peak_connections} vs {d.peak_connections}), "
            f"errors {p.errors} vs {d.errors}"
        )
    return lines


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def storage_bench(
    url: str,
    workers: list[int],
    processes: int = SETTINGS["processes"],
    seed_trials: int = SETTINGS["seed_trials"],
    duration_s: float = SETTINGS["duration_s"],
    cycles: int = SETTINGS["cycles"],
    log: Callable[[str], None] = print,
) -> list[StorageRow]:
    """Every worker count straight on ``url``, then through a proxy this starts in front of it (only
    then, so that its connections never count in a direct run); one line logged per run as it ends.
    ``cycles`` > 0: that many cycles per worker, else ``duration_s``. Each run has a fresh study."""
    _check_url(url)
    rows = []

    def runs(mode: str, target: str) -> None:
        for n in workers:
            rows.append(_run(mode, target, url, _seed(url, seed_trials), n, processes, duration_s, cycles))
            log(row_line(rows[-1]))

    runs("direct", url)
    with _proxy(url) as address:
        runs("proxy", address)
    return rows


def _check_url(url: str) -> None:
    if not url.startswith("postgresql"):
        raise StoreError(
            f"bench storage {url}: give a PostgreSQL URL (postgresql://...): the benchmark counts the server's "
            "connections in pg_stat_activity"
        )
    check_storage(url)


# --------------------------------------------------------------------------- the study, the proxy, the monitor


def _seed(url: str, n: int) -> str:
    """A fresh study holding ``n`` finished trials (a parameter and a value each), added by a few
    clients at once; its name."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = f"bench-storage-{uuid.uuid4().hex[:8]}"
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    values = [random.random() for _ in range(n)]
    trials = [optuna.trial.create_trial(params={"x": x}, distributions={"x": dist}, value=x) for x in values]
    storages = [optuna.storages.RDBStorage(url) for _ in range(SETTINGS["seed_threads"])]
    optuna.create_study(study_name=name, storage=storages[0])
    studies = [optuna.load_study(study_name=name, storage=s) for s in storages]
    threads = [threading.Thread(target=s.add_trials, args=(trials[i :: len(studies)],)) for i, s in enumerate(studies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in storages:
        s.engine.dispose()  # the seeding clients' connections do not count in the run's peak
    return name


@contextlib.contextmanager
def _proxy(url: str) -> Iterator[str]:
    """``studyrunner storage-proxy URL`` on a free loopback port, as a user starts it; its grpc:// address."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"grpc://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "studyrunner", "storage-proxy", url, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                check_storage(address)
                break
            except StoreError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read() if proc.stdout and proc.poll() is not None else ""
                    raise StudyrunnerError(f"bench storage: the storage proxy did not start: {out.strip()}") from None
                time.sleep(0.3)
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


class _Monitor(threading.Thread):
    """Counts the client connections to the study's database every ``sample_s``, itself excluded."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        import sqlalchemy as sa

        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            self.conn = self.engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            first = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
            raise StudyrunnerError(f"bench storage: the connection monitor cannot connect ({first})") from None
        self.query = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        self.peak = 0
        self.halt = threading.Event()

    def sample(self) -> None:
        self.peak = max(self.peak, int(self.conn.execute(self.query).scalar_one()))
        self.conn.rollback()  # a fresh snapshot of pg_stat_activity each time

    def run(self) -> None:
        while not self.halt.wait(SETTINGS["sample_s"]):
            self.sample()

    def stop(self) -> int:
        self.halt.set()
        if self.ident is not None:  # it was started: one last look after the run
            self.join()
            self.sample()
        self.conn.close()
        self.engine.dispose()
        return self.peak


# --------------------------------------------------------------------------- one run: N workers in a few processes


def _run(mode: str, target: str, url: str, study: str, n: int, processes: int, duration_s: float, cycles: int) -> StorageRow:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited connections or gRPC state
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    sizes = [n // processes + (i < n % processes) for i in range(min(processes, n))]
    plan = (target, study, duration_s, cycles, SETTINGS["reports"], SETTINGS["retry_s"])
    procs = [ctx.Process(target=_worker_process, args=(size, plan, ready, results, go), daemon=True) for size in sizes]
    monitor = _Monitor(url)  # connected before the workers: a server they fill up still lets it count
    for p in procs:
        p.start()
    try:
        for _ in range(n):
            ready.get(timeout=SETTINGS["ready_s"])
        monitor.start()
        go.set()
        parts = [results.get(timeout=SETTINGS["ready_s"] + duration_s + 600) for _ in procs]
    except queue.Empty:
        raise StudyrunnerError(f"bench storage: {mode} with {n} workers: the worker processes stopped answering") from None
    finally:
        peak = monitor.stop()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return _row(mode, n, parts, peak)


def _row(mode: str, n: int, parts: list[dict[str, Any]], peak: int) -> StorageRow:
    asks = sorted(a for part in parts for a in part["asks"])
    start, end = min(p["start"] for p in parts), max(p["end"] for p in parts)
    done = sum(p["done"] for p in parts)
    errors = sum(p["errors"] for p in parts)
    first = next((p["first_error"] for p in parts if p["first_error"]), "")
    p50 = statistics.median(asks) if asks else float("nan")
    p99 = asks[min(len(asks) - 1, int(0.99 * len(asks)))] if asks else float("nan")
    return StorageRow(mode, n, done / max(end - start, 1e-9), p50, p99, errors, peak, first)


def _worker_process(threads: int, plan: tuple[Any, ...], ready: Any, results: Any, go: Any) -> None:
    """``threads`` simulated workers in this process; their figures together on ``results``."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    figures: list[dict[str, Any]] = []
    workers = [threading.Thread(target=_worker, args=(i, plan, ready, go, figures)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    results.put(
        {
            "asks": [a for f in figures for a in f["asks"]],
            "done": sum(f["done"] for f in figures),
            "errors": sum(f["errors"] for f in figures),
            "first_error": next((f["first_error"] for f in figures if f["first_error"]), ""),
            "start": min(f["start"] for f in figures),
            "end": max(f["end"] for f in figures),
        }
    )


def _open(target: str, study_name: str, seed: int) -> Any:
    """One worker's own client on the study, its trial cache filled (a worker reads the study once when it joins)."""
    import optuna

    if target.startswith("grpc://"):
        host, port = target.removeprefix("grpc://").rsplit(":", 1)
        storage: optuna.storages.BaseStorage = optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    else:  # Optuna's default pool; the schema was checked when the study was seeded
        storage = optuna.storages.RDBStorage(target, skip_compatibility_check=True, skip_table_creation=True)
    study = optuna.load_study(
        study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler(seed), pruner=optuna.pruners.NopPruner()
    )
    study.get_trials(deepcopy=False)
    return study


def _worker(index: int, plan: tuple[Any, ...], ready: Any, go: Any, figures: list[dict[str, Any]]) -> None:
    """One simulated worker: connect, wait for the start, then cycles until the count or the time is up."""
    target, study_name, duration_s, cycles, reports, retry_s = plan
    seed = os.getpid() * 1000 + index
    out: dict[str, Any] = {"asks": [], "done": 0, "errors": 0, "first_error": ""}
    study = _attempt(out, lambda: _open(target, study_name, seed))
    ready.put(1)
    go.wait()
    out["start"] = time.monotonic()
    stop_at, tried = out["start"] + duration_s, 0
    while (tried < cycles) if cycles else (time.monotonic() < stop_at):
        tried += 1
        if study is None:
            study = _attempt(out, lambda: _open(target, study_name, seed))
        if study is not None and _attempt(out, functools.partial(_cycle, study, reports, out["asks"])) is not None:
            out["done"] += 1
        elif retry_s:
            time.sleep(retry_s)
    out["end"] = time.monotonic()
    figures.append(out)


def _cycle(study: Any, reports: int, asks: list[float]) -> bool:
    """A trial's storage traffic without its training: ask, ``reports`` intermediate values, tell."""
    start = time.perf_counter()
    trial = study.ask()
    asks.append(1000 * (time.perf_counter() - start))
    value = random.random()
    for step in range(reports):
        trial.report(value, step)
    study.tell(trial, value)
    return True


def _attempt(out: dict[str, Any], step: Callable[[], Any]) -> Any:
    """``step()``, or None with the error counted (the first one kept, in one line)."""
    try:
        return step()
    except Exception as exc:  # a storage error of any kind is a failed cycle of this worker, never the benchmark's
        out["errors"] += 1
        if not out["first_error"]:
            out["first_error"] = _error_line(exc)
        return None


def _error_line(exc: BaseException) -> str:
    """The error and, where Optuna wraps the database's, the database's own first line ("too many clients")."""
    root = exc
    while root.__cause__ or root.__context__:
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    lines = str(root).strip().splitlines()
    text = f"{type(root).__name__}: {lines[0] if lines else ''}"
    return (text if root is exc else f"{type(exc).__name__} from {text}")[:300]

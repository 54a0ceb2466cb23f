"""``studyrunner run --jobs N``: N local worker processes on one study, torch threads divided.

Each worker is an ordinary ``studyrunner run`` process on the same storage (what a worker on
another machine runs too); this parent starts them, shows the study's progress from the storage
and waits. Worker output goes to ``runs/workers/<study>-w<i>.log``.

``--gpus 0,1 [--trials-per-gpu K]`` pins each worker to one GPU through ``CUDA_VISIBLE_DEVICES``,
round-robin over the list, at most K workers a GPU; a worker then trains on ``cuda`` (its one GPU).
Without ``--jobs`` every slot is filled: GPUs x K workers. The GPU indices are CUDA's, as
``torch.cuda.device_count()`` counts them in this process (with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``,
set for the workers unless already set, the numbering ``nvidia-smi`` shows).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console

from studyrunner.errors import StudyrunnerError
from studyrunner.narrative.spec import is_narrative, load_narrative
from studyrunner.search.spec import load_sweep
from studyrunner.stores import open_storage, resolve_storage, resolve_tracking_uri, setup_lock

__all__ = ["run_workers", "worker_command", "parse_gpus", "gpu_assignment", "worker_envs"]


def parse_gpus(text: str) -> list[int]:
    """``--gpus 0,1``: GPU indices (ints >= 0), each once."""
    parts = [p.strip() for p in text.split(",")]
    bad = next((p for p in parts if not re.fullmatch(r"[0-9]+", p)), None)
    if bad is not None:
        raise StudyrunnerError(f"--gpus {text}: {bad!r} is not a GPU index; give indices >= 0, comma-separated, e.g. --gpus 0,1")
    indices = [int(p) for p in parts]
    twice = next((i for i in indices if indices.count(i) > 1), None)
    if twice is not None:
        raise StudyrunnerError(f"--gpus {text}: GPU {twice} is listed twice; list each GPU once (--trials-per-gpu K shares one)")
    return indices


def gpu_assignment(gpus: str, jobs: int | None, per_gpu: int, device_count: int) -> list[int]:
    """The GPU index of each worker for ``--gpus GPUS [--jobs N] --trials-per-gpu K`` on a machine of
    ``device_count`` CUDA GPUs: round-robin over the list, so no GPU gets more than K workers; without
    N, GPUs x K. Checked here, before any store opens or worker starts; pure, so tested without a GPU."""
    indices = parse_gpus(gpus)
    if device_count == 0:
        raise StudyrunnerError(f"--gpus {gpus}: this machine has no CUDA GPU (torch.cuda.device_count() == 0)")
    missing = next((i for i in indices if i >= device_count), None)
    if missing is not None:
        have = f"{device_count} CUDA GPU{'s' if device_count > 1 else ''} (indices 0-{device_count - 1})"
        raise StudyrunnerError(f"--gpus {gpus}: there is no GPU {missing}; this machine has {have}")
    most = len(indices) * per_gpu
    if jobs is not None and jobs > most:
        raise StudyrunnerError(
            f"--jobs {jobs}: at most {most} workers on --gpus {gpus} with --trials-per-gpu {per_gpu} ({len(indices)} x {per_gpu})"
        )
    return [indices[i % len(indices)] for i in range(jobs or most)]


def worker_envs(base: Mapping[str, str], jobs: int, gpus: list[int] | None = None) -> list[dict[str, str]]:
    """Each worker's environment: its number and, with ``gpus`` (one index per worker), that one GPU
    in ``CUDA_VISIBLE_DEVICES``. An index counts the GPUs this process sees: where ``CUDA_VISIBLE_DEVICES``
    already narrows them, GPU i is its i-th entry."""
    envs = [{**base, "STUDYRUNNER_WORKER": str(i), "COLUMNS": "120"} for i in range(jobs)]
    if gpus is None:
        return envs
    seen = [v.strip() for v in base["CUDA_VISIBLE_DEVICES"].split(",")] if base.get("CUDA_VISIBLE_DEVICES") else None
    for env, gpu in zip(envs, gpus, strict=True):
        env["CUDA_VISIBLE_DEVICES"] = seen[gpu] if seen else str(gpu)
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return envs


def _gpu_plan(gpus: str | None, jobs: int | None, per_gpu: int, sets: list[str]) -> list[int] | None:
    if gpus is None:
        return None
    if any(s.split("=", 1)[0].strip() == "device" for s in sets):
        raise StudyrunnerError("--set device=...: with --gpus each worker trains on its one GPU (device cuda); leave it out")
    import torch

    return gpu_assignment(gpus, jobs, per_gpu, torch.cuda.device_count())


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
    jobs: int | None,
    n_trials: int | None,
    timeout: float | None,
    scale: str,
    sets: list[str],
    storage: str | None,
    tracking_uri: str | None,
    data_dir: str | None,
    console: Console,
    gpus: str | None = None,
    trials_per_gpu: int = 1,
) -> int:
    """Start ``jobs`` workers (with ``gpus``, each pinned to one), report progress until they end; the
    exit code is the worst of theirs."""
    if storage and storage.startswith("sqlite:///:memory:"):
        raise StudyrunnerError("--jobs needs a storage the workers share; an in-memory SQLite database is not")
    plan = _gpu_plan(gpus, jobs, trials_per_gpu, sets)
    jobs = len(plan) if plan else jobs or 1
    name = load_narrative(sweep).study if is_narrative(sweep) else load_sweep(sweep).study  # validate before starting
    url, uri = resolve_storage(storage), resolve_tracking_uri(tracking_uri)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    _prepare_stores(url, uri)
    logs = Path("runs/workers")
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    sets = ["device=cuda", *sets] if plan else sets
    for i, env in enumerate(worker_envs(os.environ, jobs, plan)):
        log = open(logs / f"{name}-w{i}.log", "w")  # noqa: SIM115 - closed when the worker ends
        if plan:  # the log says which GPU the worker had
            print(f"worker {i}: CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']}", file=log, flush=True)
        cmd = worker_command(sweep, n_trials, timeout, scale, sets, url, uri, data_dir, threads)
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    on = f", GPUs {','.join(str(g) for g in plan)}" if plan else ""
    console.print(f"{jobs} workers on {url} ({threads} torch threads each{on}); logs in {logs}/{name}-w*.log")
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
        store = open_storage(url)  # a database URL, journal:PATH or a grpc:// storage proxy
        names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
        trials = [
            t
            for n in names
            if n == name or n.startswith(f"{name}.")
            for t in optuna.load_study(study_name=n, storage=store).get_trials(deepcopy=False)
        ]
    except Exception:  # the workers may not have created the study yet
        return ""
    return f"{name}: " + ", ".join(f"{k.value} {v}" for k, v in sorted(count_states(trials).items()))

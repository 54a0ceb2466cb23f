"""The gRPC storage proxy: `studyrunner storage-proxy` in front of a real PostgreSQL, a study run
through it and the same study run straight on the database, and the bad inputs of both sides."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from studyrunner.states import TrialState, trial_state
from studyrunner.stores import StoreError, check_storage, open_storage
from tests.servers import free_port

pytestmark = pytest.mark.postgres


def _studyrunner(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "studyrunner", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


class Proxy:
    """``python -m studyrunner storage-proxy URL --port P`` as a child process, ready when its address answers."""

    def __init__(self, url: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"grpc://127.0.0.1:{self.port}"
        self.log = log
        cmd = [sys.executable, "-m", "studyrunner", "storage-proxy", url, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                check_storage(self.url)
                return
            except StoreError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"storage-proxy did not start: {log.read_text()}") from None
                time.sleep(0.3)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def proxy(pg_url: str, tmp_path: Path) -> Iterator[Proxy]:
    started = Proxy(pg_url, tmp_path / "proxy.log")
    yield started
    started.stop()


def _grid_sweep(tmp_path: Path, tiny_train: str, name: str) -> Path:
    """Three grid points in the seed's order, no pruning: the same trials wherever the study is stored."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"study: {name}\nbudget: {{n_trials: 3}}\nsampler: {{name: grid, seed: 7}}\npruner: {{name: none}}\n"
        + tiny_train.replace("epochs: 3", "epochs: 2")
        + "space:\n  optim.lr: {choices: [0.001, 0.003, 0.01]}\n"
    )
    return path


def _trials(storage: optuna.storages.BaseStorage, name: str) -> list[tuple[int, str, dict[str, object]]]:
    study = optuna.load_study(study_name=name, storage=storage)
    return [(t.number, trial_state(t), t.params) for t in study.trials]


@pytest.mark.long
def test_a_study_through_the_proxy_matches_the_same_study_on_the_database(tmp_path, tiny_train, pg_server, pg_url, proxy):
    sweep = _grid_sweep(tmp_path, tiny_train, "px")
    through = _studyrunner(["run", str(sweep), "--storage", proxy.url, "--tracking-uri", "none"], cwd=tmp_path)
    assert through.returncode == 0, through.stdout + through.stderr
    direct_url = pg_server.database()
    direct = _studyrunner(["run", str(sweep), "--storage", direct_url, "--tracking-uri", "none"], cwd=tmp_path)
    assert direct.returncode == 0, direct.stdout + direct.stderr

    proxied = _trials(open_storage(proxy.url), "px")
    assert proxied == _trials(open_storage(pg_url), "px")  # what the proxy served is what its database holds
    assert [state for _, state, _ in proxied] == ["COMPLETE"] * 3
    assert proxied == _trials(open_storage(direct_url), "px")
    assert sorted(p["optim.lr"] for _, _, p in proxied) == [0.001, 0.003, 0.01]  # the whole grid, once each
    best = max(optuna.load_study(study_name="px", storage=open_storage(proxy.url)).trials, key=lambda t: t.value or 0)
    assert best.value is not None and best.value > 0.4  # 4 classes: well above chance (0.25), so the trials learned

    listed = _studyrunner(["ls", "--storage", proxy.url], cwd=tmp_path)  # a reading command through the proxy too
    assert listed.returncode == 0 and "px" in listed.stdout, listed.stdout + listed.stderr
    assert proxy.stop() == 0
    assert "no TLS and no authentication" in proxy.log.read_text() and "storage proxy stopped" in proxy.log.read_text()


@pytest.mark.long
def test_two_workers_through_the_proxy_wait_for_the_last_trial_instead_of_cancelling_surplus_ones(tmp_path, tiny_train, proxy):
    sweep = tmp_path / "two.yaml"  # trials long enough that one worker idles while the other runs the last one
    sweep.write_text(
        "study: two\nbudget: {n_trials: 3}\npruner: {name: none}\n"
        + tiny_train.replace("epochs: 3", "epochs: 8")
        + "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
    )
    res = _studyrunner(["run", str(sweep), "--jobs", "2", "--storage", proxy.url, "--tracking-uri", "none"], cwd=tmp_path)
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "workers").glob("two-w*.log"))
    assert res.returncode == 0, res.stdout + res.stderr + logs
    study = optuna.load_study(study_name="two", storage=open_storage(proxy.url))
    states = [trial_state(t) for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 3, logs
    # Two workers that finish in the same instant may both ask for the last slot; the loser's trial is
    # cancelled before training. Without the wait, the idle worker would start and cancel one per poll.
    assert states.count(TrialState.CANCELLED) <= 1 and len(states) <= 4, logs
    assert "waiting for trial(s)" in logs and "this storage has no heartbeats" in logs
    assert len({t.user_attrs["worker"] for t in study.trials if trial_state(t) == TrialState.COMPLETE}) == 2


def test_nothing_listening_at_a_grpc_storage_is_one_line_and_exit_1(tmp_path, tiny_train):
    sweep = _grid_sweep(tmp_path, tiny_train, "none")
    port = free_port()
    res = _studyrunner(["run", str(sweep), "--storage", f"grpc://127.0.0.1:{port}", "--tracking-uri", "none"], cwd=tmp_path)
    assert res.returncode == 1
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert lines == [
        f"error: nothing is listening at grpc://127.0.0.1:{port}: start the proxy with `studyrunner storage-proxy URL`"
    ]
    assert not (tmp_path / "runs" / "checkpoints").exists()  # refused before anything ran


def test_a_grpc_storage_where_something_else_listens_is_refused_up_front(pg_server):
    with pytest.raises(StoreError, match=r"no Optuna storage proxy answers there .*is it `studyrunner storage-proxy`\?"):
        check_storage(f"grpc://127.0.0.1:{pg_server.port}")  # a PostgreSQL port: it listens, but speaks no gRPC


def test_a_grpc_storage_without_a_port_names_the_form(tmp_path):
    res = _studyrunner(["ls", "--storage", "grpc://127.0.0.1"], cwd=tmp_path)
    out = (res.stdout + res.stderr).strip()
    assert res.returncode == 1
    assert "give the proxy's address as grpc://HOST:PORT" in out and len(out.splitlines()) == 1, out


@pytest.mark.parametrize(
    ("backend", "says"),
    [
        ("postgresql://postgres@127.0.0.1:{dead}/x", "no server answers at 127.0.0.1:{dead}"),
        ("mongodb://127.0.0.1/x", "unknown scheme 'mongodb'"),
        ("grpc://127.0.0.1:{dead}", "serves a database URL"),
    ],
)
def test_storage_proxy_refuses_a_bad_database_url_in_one_line(tmp_path, backend, says):
    dead = free_port()
    res = _studyrunner(["storage-proxy", backend.format(dead=dead), "--port", str(free_port())], cwd=tmp_path, timeout=60)
    out = (res.stdout + res.stderr).strip()
    assert res.returncode == 1
    assert says.format(dead=dead) in out and len(out.splitlines()) == 1, out


def test_storage_proxy_refuses_a_port_in_use(tmp_path, pg_url, proxy):
    res = _studyrunner(["storage-proxy", pg_url, "--port", str(proxy.port)], cwd=tmp_path, timeout=60)
    out = (res.stdout + res.stderr).strip()
    assert res.returncode == 1
    assert f"--port {proxy.port}: cannot listen there" in out and len(out.splitlines()) == 1, out

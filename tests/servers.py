"""Real servers for the tests that need them: a PostgreSQL of our own and an ``mlflow server`` with
its artifact proxy, both on loopback, each able to stop and start again on the same port (the
restart tests). Nothing here is mocked: these are the distribution's PostgreSQL binaries and
MLflow's own server."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    candidates = ([found] if found else []) + sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


class Postgres:
    """A PostgreSQL server in a temporary folder on 127.0.0.1 (trust auth)."""

    def __init__(self, max_connections: int = 200) -> None:
        pg = _pg_bin()
        if pg is None:
            if os.environ.get("CI"):
                pytest.fail("PostgreSQL server binaries missing: .ci/run installs the distribution's postgresql package")
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
        self.bin = pg
        self.home = Path(tempfile.mkdtemp(prefix="studyrunner-pg-"))  # outside pytest's root-only tmp tree
        self.data = self.home / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            self.home.chmod(0o777)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.max_connections = max_connections
        subprocess.run(
            [*self.as_user, str(pg / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres"],
            check=True,
            capture_output=True,
        )
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database(self) -> str:
        """The URL of a new, empty database on this server (one per test: no study names shared)."""
        import uuid

        import psycopg

        name = f"t{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), *args], check=True, capture_output=True)

    def start(self) -> None:
        opts = f"-p {self.port} -h 127.0.0.1 -k {self.data} -c max_connections={self.max_connections}"
        self._ctl("-l", str(self.home / "log"), "-w", "start", "-o", opts)

    def stop(self) -> None:
        self._ctl("-m", "fast", "-w", "stop")

    def restart(self, down_s: float = 0.0) -> None:
        """Stop (every client connection is cut), stay down ``down_s`` seconds, start again."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        stop = [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
        subprocess.run(stop, capture_output=True)
        shutil.rmtree(self.home, ignore_errors=True)


class MlflowServer:
    """``mlflow server --serve-artifacts`` on 127.0.0.1: an SQLite backend and an artifact folder
    under ``root``; clients reach the artifacts only through the server (``mlflow-artifacts:``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_s: float = 90.0) -> None:
        args = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"), "--serve-artifacts", "--workers", "1",
        ]  # fmt: skip
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server's own, closed with it
        # no job runner: its consumer processes (GenAI features) would outlive the server and slow later tests
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env, start_new_session=True)
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.root / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server not ready after {ready_s:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # open keep-alive connections hold a graceful shutdown
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""`studyrunner bench storage` on a real PostgreSQL: workers straight on the database and through a
real storage proxy process; the printed figures parse, nothing fails, and the proxy holds fewer
server connections."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from studyrunner.bench.storage import parse_workers
from studyrunner.errors import StudyrunnerError

LINE = re.compile(
    r"^(direct|proxy)\s+(\d+) workers:\s+([\d.]+) cycles/s\s+ask p50\s+([\d.]+) ms\s+p99\s+([\d.]+) ms\s+"
    r"errors\s+(\d+)\s+peak connections\s+(\d+)$"
)
RATIO = re.compile(r"^proxy/direct at\s+(\d+) workers: cycles/s ([\d.]+)x, ask p50 ([\d.]+)x, p99 ([\d.]+)x, peak connections")


@pytest.mark.postgres
@pytest.mark.long
def test_storage_bench_prints_both_modes_and_the_proxy_holds_fewer_connections(pg_url, tmp_path):
    cmd = [sys.executable, "-m", "studyrunner", "bench", "storage", pg_url]
    cmd += ["--workers", "4,8", "--processes", "2", "--cycles", "3", "--seed-trials", "20"]
    res = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "COLUMNS": "250"}, capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    rows = {(m[1], int(m[2])): m for m in (LINE.match(line.strip()) for line in out.splitlines()) if m}
    assert set(rows) == {("direct", 4), ("direct", 8), ("proxy", 4), ("proxy", 8)}, out
    for m in rows.values():
        cycles_per_s, p50, p99, errors = float(m[3]), float(m[4]), float(m[5]), int(m[6])
        assert cycles_per_s > 0 and 0 < p50 <= p99 and errors == 0, m[0]
    for n in (4, 8):
        direct, proxy = int(rows[("direct", n)][7]), int(rows[("proxy", n)][7])
        assert direct >= n  # every direct worker holds a connection of its own
        assert 0 < proxy <= direct, (proxy, direct)
    assert [int(m[1]) for m in (RATIO.match(line) for line in out.splitlines()) if m] == [4, 8], out
    assert out.strip().splitlines()[-1].startswith("on ")  # the machine the figures came from


def test_worker_counts_are_positive_integers():
    assert parse_workers("32, 64,128") == [32, 64, 128]
    for bad in ("", "32,x", "0", "-4"):
        with pytest.raises(StudyrunnerError, match="--workers"):
            parse_workers(bad)


def test_the_storage_bench_refuses_a_url_that_is_not_postgresql(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "studyrunner", "bench", "storage", f"sqlite:///{tmp_path / 'x.db'}", "--cycles", "1"],
        cwd=tmp_path, env={**os.environ, "COLUMNS": "250"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = (res.stdout + res.stderr).strip()
    assert res.returncode == 1 and "give a PostgreSQL URL" in out and len(out.splitlines()) == 1, out

"""scripts/gpu_check.py: refused in one line (exit 2) without CUDA; with --device cpu --quick every check
runs to the end on the CIFAR-10 image folders and prints one line per figure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent.parent / "scripts" / "gpu_check.py"


def _run(*args: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_refuses_in_one_line_with_exit_2():
    res = _run()
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout == "" and res.stderr.count("\n") == 1
    assert res.stderr.startswith("gpu_check: no CUDA GPU here") and "--device cpu --quick" in res.stderr


def test_help_names_the_device_and_quick_options():
    res = _run("--help")
    assert res.returncode == 0 and "--device" in res.stdout and "--quick" in res.stdout
    assert "--fit-worker" not in res.stdout  # the trial processes' own option stays out of the help


@pytest.mark.long
@pytest.mark.cifar
def test_cpu_quick_runs_every_check_to_the_end(cifar_dir):
    res = _run("--device", "cpu", "--quick", env={"STUDYRUNNER_DATA_DIR": str(cifar_dir)}, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    keys = [line.split(":", 1)[0] for line in lines]
    assert keys == ["device", "versions", "cpu", "smoke"] + ["throughput"] * 4 + ["epoch", "packing", "done"]
    assert "(falls)" in lines[3] and "every check passed" in lines[-1]
    assert "x the throughput packed" in lines[9]

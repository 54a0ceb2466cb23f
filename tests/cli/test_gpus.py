"""`studyrunner run --gpus 0,1 [--jobs N] [--trials-per-gpu K]`: the GPU list checked up front (without
a GPU: the device count is an argument), and each worker's environment pinning its one GPU."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from studyrunner.cli.main import app
from studyrunner.cli.workers import gpu_assignment, parse_gpus, worker_envs
from studyrunner.errors import StudyrunnerError

runner = CliRunner()


def _refusal(gpus: str, jobs: int | None = None, per_gpu: int = 1, count: int = 2) -> str:
    with pytest.raises(StudyrunnerError) as exc:
        gpu_assignment(gpus, jobs, per_gpu, count)
    return str(exc.value)


def test_parse_gpus_reads_indices_in_order():
    assert parse_gpus("0") == [0]
    assert parse_gpus("3, 1,2") == [3, 1, 2]


@pytest.mark.parametrize("text, bad", [("0,x", "'x'"), ("-1", "'-1'"), ("", "''"), ("0,,1", "''"), ("1.5", "'1.5'")])
def test_a_bad_index_is_refused_naming_it(text, bad):
    message = _refusal(text)
    assert message.startswith(f"--gpus {text}: {bad} is not a GPU index") and "\n" not in message


def test_a_gpu_listed_twice_is_refused():
    assert _refusal("0,1,0") == "--gpus 0,1,0: GPU 0 is listed twice; list each GPU once (--trials-per-gpu K shares one)"


def test_no_cuda_gpu_is_refused_in_one_line():
    assert _refusal("0,1", count=0) == "--gpus 0,1: this machine has no CUDA GPU (torch.cuda.device_count() == 0)"


def test_an_index_beyond_the_machines_gpus_is_refused():
    assert _refusal("0,2", count=2) == "--gpus 0,2: there is no GPU 2; this machine has 2 CUDA GPUs (indices 0-1)"
    assert "has 1 CUDA GPU (indices 0-0)" in _refusal("1", count=1)


def test_more_jobs_than_slots_is_refused_with_the_maximum():
    assert _refusal("0,1", jobs=5, per_gpu=2, count=4) == (
        "--jobs 5: at most 4 workers on --gpus 0,1 with --trials-per-gpu 2 (2 x 2)"
    )
    assert "at most 2 workers" in _refusal("0,1", jobs=3)


def test_workers_go_round_robin_and_fill_every_slot_by_default():
    assert gpu_assignment("0,1", None, 1, 2) == [0, 1]
    assert gpu_assignment("1,0", None, 3, 2) == [1, 0, 1, 0, 1, 0]
    assert gpu_assignment("0,1", 3, 2, 8) == [0, 1, 0]
    assert gpu_assignment("3", 2, 2, 4) == [3, 3]
    for plan, k in ((gpu_assignment("0,1,2", 7, 3, 3), 3), (gpu_assignment("2,5", None, 4, 6), 4)):
        assert max(plan.count(g) for g in set(plan)) <= k


def test_each_worker_env_pins_its_one_gpu():
    envs = worker_envs({"PATH": "/bin"}, 4, [0, 1, 0, 1])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0", "1"]
    assert [e["STUDYRUNNER_WORKER"] for e in envs] == ["0", "1", "2", "3"]
    assert all(e["PATH"] == "/bin" and e["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for e in envs)


def test_an_index_counts_the_gpus_this_process_already_sees():
    """Under CUDA_VISIBLE_DEVICES=4,6 torch sees two GPUs; --gpus 1 is the second of them, GPU 6."""
    envs = worker_envs({"CUDA_VISIBLE_DEVICES": "4, 6", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"}, 2, [1, 0])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["6", "4"]
    assert envs[0]["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"  # a numbering the user chose is kept


def test_without_gpus_the_workers_env_is_untouched():
    envs = worker_envs({"CUDA_VISIBLE_DEVICES": "3"}, 2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["3", "3"] and "CUDA_DEVICE_ORDER" not in envs[0]


def _cli(tmp_path, *args: str):
    sweep = tmp_path / "s.yaml"
    sweep.write_text("study: s\ntrain: {epochs: 1}\nspace:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n")
    return runner.invoke(app, ["run", str(sweep), "--storage", f"sqlite:///{tmp_path / 'o.db'}", *args])


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="checks the refusal on a machine without a CUDA GPU")
def test_cli_refuses_gpus_on_a_machine_without_cuda(tmp_path):
    res = _cli(tmp_path, "--gpus", "0")
    assert res.exit_code == 1
    assert " ".join(res.output.split()) == "error: --gpus 0: this machine has no CUDA GPU (torch.cuda.device_count() == 0)"
    assert not (tmp_path / "o.db").exists()  # refused before any store opened


def test_cli_refuses_a_bad_list_and_trials_per_gpu_without_gpus(tmp_path):
    res = _cli(tmp_path, "--gpus", "0,0")
    assert res.exit_code == 1 and "GPU 0 is listed twice" in res.output
    res = _cli(tmp_path, "--trials-per-gpu", "2")
    assert res.exit_code == 1 and "--trials-per-gpu 2: needs --gpus" in " ".join(res.output.split())
    res = _cli(tmp_path, "--gpus", "0", "--set", "device=cpu")
    assert res.exit_code == 1 and "leave it out" in res.output

"""The README's quick tour, run as written: its lines, one after the other, in a plain bash (no
studyrunner variables, no virtualenv on PATH) on a fresh copy of the project whose only extras are
what the two set-up commands made (.venv and the unpacked .data/). `studyrunner ui` runs until its
servers have said where they are, then is stopped by SIGTERM (the path Ctrl-C takes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

pytestmark = [pytest.mark.long, pytest.mark.cifar]

ROOT = Path(__file__).parents[2]


def tour_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- tour -->", 1)[1].split("<!-- /tour -->", 1)[0]
    code = block.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in code.strip().splitlines() if line.strip()]


def _fresh_copy(dest: Path) -> Path:
    """The project's files as a clone has them (tracked and new, not ignored), plus the set-up's
    .venv and .data as links."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    (dest / ".venv").symlink_to(Path(sys.prefix))
    (dest / ".data").symlink_to(ROOT / ".data")
    return dest


def _script(lines: list[str]) -> str:
    out = ["set -eo pipefail", "set -x"]
    for line in lines:
        if line.startswith("studyrunner ui"):
            command = line.split(" #", 1)[0].strip()
            out += [
                f"{command} > ui.log &",
                "pid=$!",
                "for _ in $(seq 600); do grep -q 'Ctrl-C stops' ui.log && break; kill -0 $pid || break; sleep 0.5; done",
                "kill -TERM $pid; wait $pid",  # background jobs of a script ignore SIGINT; TERM takes the same path
            ]
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def test_the_tour_is_a_bash_block_of_studyrunner_commands():
    lines = tour_lines()
    assert lines[0].startswith("source .venv/bin/activate")
    assert all(line.startswith("studyrunner ") for line in lines[1:]) and len(lines) >= 8


def test_the_readme_tour_runs_as_written_in_a_plain_shell(tmp_path):
    if not (ROOT / ".data" / "cifar10-jpg").is_dir() or not (Path(sys.prefix) / "bin" / "activate").is_file():
        pytest.skip("needs the set-up's .venv and .data/cifar10-jpg (make install data)")
    project = _fresh_copy(tmp_path / "studyrunner")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STUDYRUNNER_", "MLFLOW_", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # no virtualenv: the tour's first line activates it
    done = subprocess.run(["bash", "-c", _script(tour_lines())], cwd=project, env=env, capture_output=True, text=True)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said[-4000:]

    assert "study tour: 4/4 finished" in " ".join(said.split())
    study = optuna.load_study(study_name="tour", storage=f"sqlite:///{project / 'runs' / 'optuna.db'}")
    assert study.best_value > 0.2  # 10 classes: chance is 0.1, the tour's best trial learns
    assert (project / "runs" / "exports" / "tour-best.yaml").is_file()
    report = (project / "reports" / "tour" / "README.md").read_text()
    assert "studyrunner report tour" in report.rsplit("```bash", 1)[1]
    ui = (project / "ui.log").read_text().splitlines()
    assert [line.split()[0] for line in ui[:2]] == ["MLflow", "optuna-dashboard"]
    assert "http://127.0.0.1:5000/#/experiments/" in ui[0] and "http://127.0.0.1:8080/dashboard/" in ui[1]

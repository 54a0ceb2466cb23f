"""A trial's per-epoch curve, kept beside its checkpoint as ``history.json`` (and in MLflow as the
trial run's metric history), never in Optuna's trial table: a study of thousands of trials stays
fast to list in optuna-dashboard and the Optuna CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from studyrunner.files import atomic_write

HISTORY_FILE = "history.json"


def write_history(folder: Path, records: list[dict[str, Any]]) -> None:
    """Write atomically: a reader never sees half a file, a crash leaves the last whole one."""
    text = json.dumps(records)
    atomic_write(folder / HISTORY_FILE, lambda tmp: tmp.write_text(text))


def read_history(folder: str | Path) -> list[dict[str, Any]] | None:
    """The records in ``folder``, or None when it holds none (another machine's trial, deleted)."""
    try:
        records = json.loads((Path(folder) / HISTORY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return records if isinstance(records, list) else None

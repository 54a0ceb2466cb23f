"""Where studies and runs are stored: a command-line value, else an environment variable, else
an embedded SQLite file under ``runs/`` in the working directory."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resolve_storage", "resolve_tracking_uri"]


def _store(given: str | None, env: str, filename: str) -> str:
    if given:
        return given
    if os.environ.get(env):
        return os.environ[env]
    Path("runs").mkdir(exist_ok=True)
    return f"sqlite:///{(Path('runs') / filename).resolve()}"


def resolve_storage(url: str | None) -> str:
    """Optuna: ``--storage``, else $STUDYRUNNER_STORAGE, else SQLite runs/optuna.db."""
    return _store(url, "STUDYRUNNER_STORAGE", "optuna.db")


def resolve_tracking_uri(uri: str | None) -> str:
    """MLflow: ``--tracking-uri``, else $MLFLOW_TRACKING_URI, else SQLite runs/mlflow.db."""
    return _store(uri, "MLFLOW_TRACKING_URI", "mlflow.db")

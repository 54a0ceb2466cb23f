"""Where studies and runs are stored: a command-line value, else an environment variable, else
an embedded SQLite file under ``runs/`` in the working directory; and the Optuna storage opened
on such a URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

__all__ = ["resolve_storage", "resolve_tracking_uri", "open_storage"]


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


def open_storage(url: str, max_retries: int = 1) -> optuna.storages.BaseStorage:
    """RDB storage with heartbeats (a killed worker's trial is failed after the grace period and
    re-queued with its parameters); journal files for ``journal:PATH``."""
    import warnings

    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # wait for the lock instead of failing
    beat = int(os.environ.get("STUDYRUNNER_HEARTBEAT_S", "10"))  # seconds between a running trial's heartbeats
    grace = int(os.environ.get("STUDYRUNNER_GRACE_S", str(3 * beat)))  # silence after which its worker is dead
    with warnings.catch_warnings():  # heartbeats are marked experimental by Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=beat,
            grace_period=grace,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retries),
            **kwargs,
        )

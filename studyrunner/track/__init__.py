"""Tracking: MLflow experiments, parent and nested runs, per-trial history files, the machine a run
happened on, and the UI servers. The only wing that imports mlflow.
"""

from typing import TYPE_CHECKING

from studyrunner.lazy import exports

if TYPE_CHECKING:
    from studyrunner.track.machine import (
        environment_tags,
        machine,
    )
    from studyrunner.track.registry import (
        ALIAS,
        Registered,
        load_registered,
        register_best,
    )
    from studyrunner.track.runs import (
        ROLE,
        STUDY,
        Tracker,
        git_commit,
        metric_key,
        prepare_store,
        quiet_mlflow,
    )
    from studyrunner.track.trialfiles import (
        ARTIFACT_DIR,
        TRIAL_FILES,
        Outbox,
        fetch_checkpoint,
        fetch_state,
        trial_folder,
        upload_retry_s,
    )

__all__ = [
    "machine",
    "environment_tags",
    "ALIAS",
    "Registered",
    "register_best",
    "load_registered",
    "Tracker",
    "quiet_mlflow",
    "metric_key",
    "git_commit",
    "prepare_store",
    "ROLE",
    "STUDY",
    "ARTIFACT_DIR",
    "Outbox",
    "trial_folder",
    "upload_retry_s",
    "fetch_state",
    "fetch_checkpoint",
    "TRIAL_FILES",
]
_HOMES = {
    "machine": "machine",
    "environment_tags": "machine",
    "ALIAS": "registry",
    "Registered": "registry",
    "register_best": "registry",
    "load_registered": "registry",
    "Tracker": "runs",
    "quiet_mlflow": "runs",
    "metric_key": "runs",
    "git_commit": "runs",
    "prepare_store": "runs",
    "ROLE": "runs",
    "STUDY": "runs",
    "ARTIFACT_DIR": "trialfiles",
    "Outbox": "trialfiles",
    "trial_folder": "trialfiles",
    "upload_retry_s": "trialfiles",
    "fetch_state": "trialfiles",
    "fetch_checkpoint": "trialfiles",
    "TRIAL_FILES": "trialfiles",
}
__getattr__, __dir__ = exports(__name__, _HOMES)

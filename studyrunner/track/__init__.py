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
}
__getattr__, __dir__ = exports(__name__, _HOMES)

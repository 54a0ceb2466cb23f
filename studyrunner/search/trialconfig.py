"""The one way a trial's configuration is built, for the objective and for ``studyrunner train``.

The order is fixed, and later wins: the sweep's ``train:`` (or a train file's keys), then ``--set``
(both already in ``base``), then the trial's sampled values, then the checkpoint folder when none
was given, then a ``model.init: study:NAME`` replaced by that study's best checkpoint. Only then is
"auto" decided, once: resolving before sampling would fix the input size from the base model's
weights, so a trial that samples ``model.init: imagenet`` would train at the scratch size.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

from studyrunner.config import TrainConfig, apply_overrides
from studyrunner.engine.resolve import resolve_config
from studyrunner.errors import StudyrunnerError
from studyrunner.states import TrialRecord, best_of
from studyrunner.stores import open_storage

__all__ = ["trial_config", "best_checkpoint", "local_checkpoint", "STUDY_INIT"]

STUDY_INIT = "study:"  # model.init prefix: start from the best checkpoint of an earlier study


def trial_config(
    base: TrainConfig, sampled: Mapping[str, Any] | None = None, *, out_dir: str = "", storage: str = ""
) -> TrainConfig:
    """``base`` (train values and ``--set`` applied, not resolved) with ``sampled`` on top, the
    checkpoint folder ``out_dir`` where the config names none, and a ``study:NAME`` init looked up
    in the Optuna ``storage``; validated once and resolved once."""
    values: dict[str, Any] = dict(sampled or {})
    if out_dir and not base.out_dir and "out_dir" not in values:
        values["out_dir"] = out_dir
    cfg = apply_overrides(base, values) if values else base
    if cfg.model.init.startswith(STUDY_INIT):
        cfg = apply_overrides(cfg, {"model.init": best_checkpoint(cfg.model.init.removeprefix(STUDY_INIT), storage)})
    return resolve_config(cfg)


def best_checkpoint(study_name: str, storage: str) -> str:
    """The best-validation checkpoint of ``study_name``'s best trial (for model.init=study:NAME)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))  # a URL or grpc:// proxy
    except KeyError:
        raise StudyrunnerError(f"study:{study_name}: no study named {study_name!r} in {storage}") from None
    best = best_of(study.get_trials(deepcopy=False), study.directions[0] == optuna.study.StudyDirection.MAXIMIZE)
    if best is None:
        raise StudyrunnerError(f"study:{study_name}: the study has no completed trial yet")
    path = local_checkpoint(best, study.user_attrs.get("tracking_uri", ""))
    if not path:
        path = TrialRecord.of(best.user_attrs).checkpoint
        raise StudyrunnerError(f"study:{study_name}: best trial {best.number} has no checkpoint file ({path or 'none recorded'})")
    return str(path)


def local_checkpoint(trial: optuna.trial.FrozenTrial, tracking_uri: str = "") -> str:
    """The trial's best-validation checkpoint as a file here: where it was written, else fetched
    from its MLflow run's artifacts (a trial that ran on another machine); "" when neither has it."""
    record = TrialRecord.of(trial.user_attrs)
    if record.checkpoint and Path(record.checkpoint).is_file():
        return record.checkpoint
    if not (tracking_uri and record.mlflow_run_id and record.checkpoint):
        return ""
    from studyrunner.track.trialfiles import fetch_checkpoint

    return fetch_checkpoint(tracking_uri, record.mlflow_run_id, Path(record.checkpoint).name)

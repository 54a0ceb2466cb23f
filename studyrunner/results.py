"""Studies and trials as plain data (pandas DataFrames), read from Optuna storage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
import pandas as pd

from .errors import StudyrunnerError

__all__ = ["StudyRow", "list_studies", "load_study", "trials_frame"]


@dataclass
class StudyRow:
    name: str
    direction: str
    counts: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any]


def _state(t: optuna.trial.FrozenTrial) -> str:
    return "DIVERGED" if t.user_attrs.get("outcome") == "diverged" else t.state.name


def list_studies(storage: str) -> list[StudyRow]:
    """One row per study in ``storage``: trials by state and the best trial."""
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        counts: dict[str, int] = {}
        for t in study.get_trials(deepcopy=False):
            counts[_state(t)] = counts.get(_state(t), 0) + 1
        best = s.best_trial
        rows.append(
            StudyRow(
                s.study_name, s.direction.name.lower(), counts, best.value if best else None, dict(best.params) if best else {}
            )
        )
    return rows


def load_study(name: str, storage: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        raise StudyrunnerError(f"no study named {name!r} in {storage}; studies there: {', '.join(names) or 'none'}") from None


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Trials joined with their final metrics: number, state, value, params, test/val metrics, timing."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        history = ua.get("history") or []
        last = history[-1] if history else {}
        row: dict[str, Any] = {
            "number": t.number,
            "state": _state(t),
            "value": t.value,
            "value_sd": ua.get("value_sd"),
            "best_val_acc": ua.get("best_val_acc"),
            "test_acc": ua.get("test_acc"),
            "test_loss": ua.get("test_loss"),
            "final_train_acc": last.get("train_acc"),
            "final_val_acc": last.get("val_acc"),
            "best_epoch": ua.get("best_epoch"),
            "epochs": ua.get("epochs", len(t.intermediate_values)),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "reason": ua.get("reason") or ua.get("fail_reason") or "",
        }
        row.update({f"param.{k}": v for k, v in t.params.items()})
        rows.append(row)
    return pd.DataFrame(rows)

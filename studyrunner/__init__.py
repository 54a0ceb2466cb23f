"""studyrunner: declarative hyperparameter studies for PyTorch image classifiers.

The public API, importable from the package; each name is loaded from its module on first use,
so ``import studyrunner`` (and every CLI command that needs neither torch nor Optuna) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "TrainConfig",
    "apply_overrides",
    "resolve_config",
    "fit",
    "FitResult",
    "EpochRecord",
    "load_splits",
    "load_sweep",
    "load_narrative",
    "run_study",
    "run_narrative",
    "RunOptions",
    "TrialState",
    "StudyrunnerError",
]

_HOME = {
    "TrainConfig": "config",
    "apply_overrides": "config",
    "resolve_config": "engine.resolve",
    "fit": "engine.fit",
    "FitResult": "engine.fit",
    "EpochRecord": "engine.fit",
    "load_splits": "engine.data",
    "load_sweep": "search.spec",
    "load_narrative": "narrative.spec",
    "run_study": "search.driver",
    "run_narrative": "narrative.runner",
    "RunOptions": "search.driver",
    "TrialState": "states",
    "StudyrunnerError": "errors",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'studyrunner' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)

"""Checkpoint files and the resume-state file's bookkeeping: :func:`save_checkpoint` writes a fit's
``best.pt``/``last.pt`` (the whole network, its input normalisation, the config, the epoch and its
metrics, the class names) atomically; :func:`state_path` says where a run keeps its full state between
epochs, and :func:`identity` what a state file must match to be resumed. Writing and restoring that
state stays with the training loop in ``fit.py``, which owns the state it holds.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from studyrunner.config import RUNTIME_KEYS, TrainConfig, config_to_dict, flatten
from studyrunner.files import atomic_write

if TYPE_CHECKING:
    from studyrunner.engine.fit import Context, EpochRecord

__all__ = ["save_checkpoint", "state_path", "identity"]


def save_checkpoint(path: Path, ctx: Context, cfg: TrainConfig, record: EpochRecord, classes: list[str]) -> None:
    """The best-validation weights with what it takes to use them: normalisation, config, classes."""
    blob = {
        "model": ctx.whole.state_dict(),
        "normalisation": "imagenet" if ctx.imagenet else "data",
        "mean": ctx.mean.tolist(),
        "std": ctx.std.tolist(),
        "config": config_to_dict(cfg),
        "epoch": record.epoch,
        "metrics": asdict(record),
        "classes": classes,
    }
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def state_path(cfg: TrainConfig) -> Path | None:
    """Where a run of ``cfg`` keeps its full state between epochs (None: no out_dir, or state_every 0)."""
    return Path(cfg.out_dir) / f"state-seed{cfg.seed}.pt" if cfg.out_dir and cfg.state_every else None


def identity(cfg: TrainConfig) -> dict[str, Any]:
    """What a state file must match to be resumed: the config, less where and how fast it runs."""
    return {k: v for k, v in flatten(config_to_dict(cfg)).items() if k not in RUNTIME_KEYS}

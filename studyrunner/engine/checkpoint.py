"""Checkpoint files and the resume-state file's bookkeeping: :func:`save_checkpoint` writes a fit's
``best.pt``/``last.pt`` (the whole network, its input normalisation, the config, the epoch and its
metrics, the class names) atomically; :func:`state_path` says where a run keeps its full state between
epochs, and :func:`identity` what a state file must match to be resumed. Writing and restoring that
state stays with the training loop in ``fit.py``, which owns the state it holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from studyrunner.config import RUNTIME_KEYS, TrainConfig, config_to_dict, flatten
from studyrunner.files import atomic_write

if TYPE_CHECKING:
    from torch import nn

    from studyrunner.engine.fit import Context, EpochRecord

__all__ = ["save_checkpoint", "load_checkpoint", "Checkpoint", "state_path", "identity", "MUTABLE_KEYS"]


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


# what population-based training may change between a state file and the run that continues it
MUTABLE_KEYS = frozenset(
    {"epochs", "optim.lr", "optim.momentum", "optim.weight_decay", "model.dropout"}
    | {f"augment.{k}" for k in ("brightness", "contrast", "saturation", "hue")}
)


def identity(cfg: TrainConfig, inherit: bool = False) -> dict[str, Any]:
    """What a state file must match to be resumed: the config, less where and how fast it runs;
    with ``inherit`` (a state copied from another member of a population) also less MUTABLE_KEYS."""
    skip = RUNTIME_KEYS | MUTABLE_KEYS if inherit else RUNTIME_KEYS
    return {k: v for k, v in flatten(config_to_dict(cfg)).items() if k not in skip}


@dataclass(frozen=True)
class Checkpoint:
    """A trained network ready to predict, with exactly the preprocessing it was trained with."""

    model: nn.Module  # in eval mode, on the CPU
    config: TrainConfig  # the resolved config it was trained with (image size, resize, model)
    classes: list[str]
    mean: list[float]  # input normalisation (ImageNet's for pretrained weights, else the data's)
    std: list[float]
    epoch: int


def load_checkpoint(path: str | Path) -> Checkpoint:
    """``best.pt``/``last.pt`` of a studyrunner run, rebuilt: the network named in its config, its
    weights, its class names and its normalisation; one clear error for anything else."""
    from studyrunner.config import config_from_dict
    from studyrunner.engine.models import IMAGENET_MEAN, IMAGENET_STD, build_model
    from studyrunner.errors import StudyrunnerError

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        cfg = config_from_dict(blob["config"])
        classes = [str(c) for c in blob["classes"]]
    except Exception as exc:  # missing, truncated, not a pickle, not ours
        raise StudyrunnerError(f"{path}: not a readable studyrunner checkpoint ({type(exc).__name__}: {exc})") from None
    imagenet = blob.get("normalisation") == "imagenet"
    arch = replace(cfg.model, init="imagenet" if imagenet else "scratch")  # an ImageNet stem, when it was trained with one
    model = build_model(arch, len(classes), cfg.data.image_size)
    try:
        model.load_state_dict(blob["model"])
    except RuntimeError as exc:
        raise StudyrunnerError(f"{path}: its weights do not fit model {cfg.model.name} ({exc})") from None
    mean = list(blob.get("mean") or (IMAGENET_MEAN if imagenet else (0.5, 0.5, 0.5)))
    std = list(blob.get("std") or (IMAGENET_STD if imagenet else (0.5, 0.5, 0.5)))
    return Checkpoint(model.eval(), cfg, classes, mean, std, int(blob.get("epoch", 0)))

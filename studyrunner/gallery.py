"""A grid of validation images with predicted and true labels (document 002's picture), made
from a trial's checkpoint: the model and its resolved config are both in the file."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .config import config_from_dict
from .data import load_splits, stratified_indices
from .engine import _Ctx, predict, resolve_device
from .errors import StudyrunnerError
from .models import IMAGENET_MEAN, IMAGENET_STD, build_model
from .plots import close, plt

__all__ = ["prediction_grid"]


def prediction_grid(checkpoint: str | Path, out: Path, n: int = 16, data_dir: str | None = None) -> Path:
    """Predict ``n`` validation images (seeded, stratified) with ``checkpoint`` and save the grid."""
    try:
        blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
        cfg = config_from_dict(blob["config"])
    except Exception as exc:  # missing, truncated, not a pickle, not ours
        raise StudyrunnerError(f"{checkpoint}: not a readable studyrunner checkpoint ({type(exc).__name__}: {exc})") from None
    splits = load_splits(cfg.data, data_dir)
    val = splits.val or splits.test
    if val is None:
        raise StudyrunnerError(f"{checkpoint}: its data has no validation or test images to show")
    pick = val.subset(stratified_indices(val.labels, n, seed=0))
    imagenet = blob.get("normalisation", "imagenet" if cfg.model.init == "imagenet" else "data") == "imagenet"
    arch = replace(cfg.model, init="imagenet" if blob.get("normalisation") == "imagenet" else "scratch")  # its stem
    model = build_model(arch, len(splits.classes), cfg.data.image_size)
    try:
        model.load_state_dict(blob["model"])
    except RuntimeError as exc:
        raise StudyrunnerError(f"{checkpoint}: its weights do not fit model {cfg.model.name} ({exc})") from None
    device = resolve_device("cpu")
    mean = blob.get("mean", IMAGENET_MEAN if imagenet else splits.mean)  # the normalisation it was trained with
    std = blob.get("std", IMAGENET_STD if imagenet else splits.std)
    ctx = _Ctx(model, device, None, torch.tensor(mean), torch.tensor(std), False)
    _, pred = predict(ctx, pick, n)
    cols = 8
    rows = (len(pick) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 2.0 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(pick):
            continue
        ax.imshow(pick.images[i].permute(1, 2, 0).numpy())
        ok = int(pred[i]) == int(pick.labels[i])
        ax.set_title(
            f"{splits.classes[int(pred[i])]}\n({splits.classes[int(pick.labels[i])]})", fontsize=7, color="green" if ok else "red"
        )
    fig.suptitle("predicted (true) on validation images", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    close(fig)
    return out

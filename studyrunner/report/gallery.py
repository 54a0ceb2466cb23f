"""A grid of validation images with predicted and true labels (document 002's picture), made
from a trial's checkpoint: the model and its resolved config are both in the file."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import torch

from studyrunner.config import config_from_dict
from studyrunner.engine.data import load_splits, stratified_indices
from studyrunner.engine.fit import inference_context, predict
from studyrunner.engine.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from studyrunner.errors import StudyrunnerError
from studyrunner.plots import close, prediction_figure

__all__ = ["prediction_grid"]


def prediction_grid(checkpoint: str | Path, out: Path, n: int = 16, data_dir: str | None = None) -> Path:
    """Predict ``n`` validation images (seeded, stratified) with ``checkpoint`` and save the grid;
    ``data_dir``, when given (``--data-dir``), replaces the data.path the checkpoint was trained on."""
    try:
        blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
        cfg = config_from_dict(blob["config"])
    except Exception as exc:  # missing, truncated, not a pickle, not ours
        raise StudyrunnerError(f"{checkpoint}: not a readable studyrunner checkpoint ({type(exc).__name__}: {exc})") from None
    data = dataclasses.replace(cfg.data, path=data_dir) if data_dir else cfg.data
    splits = load_splits(data)
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
    mean = blob.get("mean", IMAGENET_MEAN if imagenet else splits.mean)  # the normalisation it was trained with
    std = blob.get("std", IMAGENET_STD if imagenet else splits.std)
    ctx = inference_context(model, mean, std)
    _, pred = predict(ctx, pick, n)
    images = [pick.images[i].permute(1, 2, 0).numpy() for i in range(len(pick))]
    names = [(splits.classes[int(p)], splits.classes[int(t)]) for p, t in zip(pred, pick.labels, strict=True)]
    fig = prediction_figure(images, names)
    try:
        fig.savefig(out, dpi=110)
    finally:
        close(fig)
    return out

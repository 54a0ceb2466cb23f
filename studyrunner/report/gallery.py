"""A grid of validation images with predicted and true labels (document 002's picture), made
from a trial's checkpoint: the model and its resolved config are both in the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from studyrunner.engine.checkpoint import load_checkpoint
from studyrunner.engine.data import load_splits, stratified_indices
from studyrunner.engine.fit import inference_context, predict
from studyrunner.errors import StudyrunnerError
from studyrunner.plots import close, prediction_figure

__all__ = ["prediction_grid"]


def prediction_grid(checkpoint: str | Path, out: Path, n: int = 16, data_dir: str | None = None) -> Path:
    """Predict ``n`` validation images (seeded, stratified) with ``checkpoint`` and save the grid;
    ``data_dir``, when given (``--data-dir``), replaces the data.path the checkpoint was trained on."""
    ck = load_checkpoint(checkpoint)
    data = dataclasses.replace(ck.config.data, path=data_dir) if data_dir else ck.config.data
    splits = load_splits(data)
    val = splits.val or splits.test
    if val is None:
        raise StudyrunnerError(f"{checkpoint}: its data has no validation or test images to show")
    pick = val.subset(stratified_indices(val.labels, n, seed=0))
    _, pred = predict(inference_context(ck.model, ck.mean, ck.std), pick, n)
    images = [pick.images[i].permute(1, 2, 0).numpy() for i in range(len(pick))]
    names = [(ck.classes[int(p)], splits.classes[int(t)]) for p, t in zip(pred, pick.labels, strict=True)]
    fig = prediction_figure(images, names)
    try:
        fig.savefig(out, dpi=110)
    finally:
        close(fig)
    return out

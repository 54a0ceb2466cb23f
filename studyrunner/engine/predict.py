"""A trained model on new images: files or folders (walked recursively), decoded at the size and
resize the model was trained with, normalised as it was, and predicted in batches with softmax
probabilities. When a folder's sub-folders are the model's classes, the images carry their true
labels, and accuracy and the confusion matrix come with the predictions. Unreadable images are
listed with the reason; the rest are predicted all the same."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from studyrunner.engine.checkpoint import Checkpoint
from studyrunner.engine.decode import DataError, FileSet, decode_readable
from studyrunner.engine.fit import inference_context
from studyrunner.engine.labels import walk_images

__all__ = ["Prediction", "Predictions", "find_images", "predict_images"]

OnBatch = Callable[[int, int], None] | None  # (images done, images in all)


@dataclass(frozen=True)
class Prediction:
    path: Path
    predicted: str
    probability: float  # the softmax probability of the predicted class
    top_k: list[tuple[str, float]]  # the k most probable classes, most probable first
    true: str | None = None  # the class folder it lies in, when the folders are class folders


@dataclass
class Predictions:
    rows: list[Prediction]
    classes: list[str]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)
    images: torch.Tensor | None = None  # the decoded uint8 images of ``rows``, NCHW (for a grid)

    @property
    def labelled(self) -> list[Prediction]:
        return [r for r in self.rows if r.true is not None]

    @property
    def accuracy(self) -> float | None:
        rows = self.labelled
        return sum(r.predicted == r.true for r in rows) / len(rows) if rows else None

    def confusion(self) -> list[list[int]]:
        """Counts [true][predicted] over the labelled images."""
        index = {c: i for i, c in enumerate(self.classes)}
        matrix = [[0] * len(self.classes) for _ in self.classes]
        for r in self.labelled:
            matrix[index[r.true]][index[r.predicted]] += 1  # type: ignore[index]
        return matrix


def find_images(paths: Sequence[str | Path], classes: Sequence[str]) -> tuple[list[Path], list[str | None]]:
    """Every image file under ``paths`` (files as given, folders walked), with its true class when
    it lies in a sub-folder named after one of ``classes`` (a folder of class folders)."""
    files: list[Path] = []
    labels: list[str | None] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        found = [p] if p.is_file() else walk_images(p)[0]
        for f in found:
            folder = f.parent.name if p.is_dir() and f.parent != p else None
            files.append(f)
            labels.append(folder if folder in classes else None)
    if not files:
        raise DataError(f"no images under {', '.join(map(str, paths))} (looked for .jpg, .jpeg, .png, ... recursively)")
    return files, labels


def predict_images(
    checkpoint: Checkpoint, paths: Sequence[str | Path], top_k: int = 3, batch_size: int = 64, on_batch: OnBatch = None
) -> Predictions:
    """``checkpoint``'s predictions for every image under ``paths``, with the preprocessing it was trained with."""
    files, labels = find_images(paths, checkpoint.classes)
    listing = FileSet(files, torch.zeros(len(files), dtype=torch.long), list(checkpoint.classes), Path(paths[0]))
    data = replace(checkpoint.config.data, cache_dir="")  # this machine's decoded-image cache
    decoded, bad = decode_readable(listing, data)
    unreadable = {f for f, _ in bad}
    kept = [(f, lab) for f, lab in zip(files, labels, strict=True) if f not in unreadable]
    probs = _probabilities(checkpoint, decoded.images, batch_size, on_batch)
    rows = []
    k = max(1, min(top_k, len(checkpoint.classes)))
    for (path, true), p in zip(kept, probs, strict=True):
        values, index = p.topk(k)
        top = [(checkpoint.classes[int(i)], float(v)) for v, i in zip(values, index, strict=True)]
        rows.append(Prediction(path, top[0][0], top[0][1], top, true))
    return Predictions(rows, list(checkpoint.classes), bad, decoded.images)


def _probabilities(checkpoint: Checkpoint, images: torch.Tensor, batch_size: int, on_batch: OnBatch) -> torch.Tensor:
    ctx = inference_context(checkpoint.model, checkpoint.mean, checkpoint.std)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = ctx.eval_inputs(images[start : start + batch_size].to(ctx.device))
            out.append(torch.softmax(ctx.model(x).float(), dim=1).cpu())
            if on_batch is not None:
                on_batch(min(start + batch_size, len(images)), len(images))
    return torch.cat(out) if out else torch.zeros(0, len(checkpoint.classes))

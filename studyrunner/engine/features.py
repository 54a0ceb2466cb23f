"""Features of a frozen backbone, computed once.

A backbone that never trains (``model.freeze: backbone``, no ``unfreeze_epoch``) is a fixed
function of its input. Without augmentation that changes every epoch, its output for every
training, validation and test image is the same in every epoch, every trial and every seed of a
study, so it is computed once, cached (in this process and on disk beside the decoded images),
and only the classifier head trains, on those features. Features are what the head sees: the
input of the model's final classifier layer, with the backbone in eval mode.

The cache key is the content: the backbone's tensors, the images, the input normalisation and
the precision, so new weights, another input size or other images never meet stale features.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from studyrunner.config import AugmentConfig
from studyrunner.engine import cachefile

__all__ = ["FeatureCache", "cache_for", "random_augmentation", "digest", "extract"]

Inputs = Callable[[torch.Tensor], torch.Tensor]  # uint8 image batch -> the backbone's input (normalised, on device)


def random_augmentation(cfg: AugmentConfig) -> bool:
    """True when the training images change from epoch to epoch (cached features would freeze them)."""
    return bool(
        cfg.crop_padding or cfg.flip or cfg.random_resized_crop or cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue
    )


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def digest(model: nn.Module, head: nn.Module, images: torch.Tensor, extra: str) -> str:
    """A content key: the backbone's tensors (everything but ``head``), the images and ``extra``."""
    h = hashlib.sha1(extra.encode())
    own = {id(t) for t in (*head.parameters(), *head.buffers())}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) not in own:
            h.update(name.encode())
            h.update(_bytes(tensor))
    h.update(_bytes(images))
    return h.hexdigest()


@torch.inference_mode()
def extract(
    model: nn.Module,
    head: nn.Module,
    images: torch.Tensor,
    inputs: Inputs,
    autocast: Callable[[], AbstractContextManager[Any]],
    batch: int,
) -> torch.Tensor:
    """The input of ``head`` for every image, the whole model in eval mode, in batches; float32 on the images' device."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda module, args, output: captured.append(args[0].float().flatten(1)))
    model.eval()
    try:
        for start in range(0, len(images), batch):
            with autocast():
                model(inputs(images[start : start + batch]))
    finally:
        hook.remove()
    return torch.cat(captured)


class FeatureCache:
    """Features by content key: in this process, then on disk under ``folder`` (atomic writes)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._memo: dict[str, torch.Tensor] = {}

    def get(self, key: str, compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, str]:
        """(features, where they came from: "memory", "disk" or "computed")."""
        if key in self._memo:
            return self._memo[key], "memory"
        path = None if self.folder is None else self.folder / f"features-{key[:24]}.pt"
        blob = None if path is None else cachefile.load(path, key)
        if blob is not None:
            self._memo[key] = blob["features"]
            return self._memo[key], "disk"
        features = compute()
        self._memo[key] = features
        if path is not None:
            cachefile.save(path, key, {"features": features})
        return features, "computed"


_CACHES: dict[Path | None, FeatureCache] = {}


def cache_for(folder: Path | None) -> FeatureCache:
    """The process's feature cache for ``folder``: every trial and seed a worker runs shares it."""
    return _CACHES.setdefault(folder, FeatureCache(folder))

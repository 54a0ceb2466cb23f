"""Frozen-backbone heads: seconds per trial of the same head training on a frozen, pretrained
EfficientNet-Lite0 at 224 px, with the feature cache and without it, in one run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from studyrunner.config import TrainConfig, apply_overrides
from studyrunner.engine.data import load_splits
from studyrunner.engine.fit import fit
from studyrunner.engine.resolve import resolve_config

__all__ = ["frozen_head"]

SETTINGS = {
    # the committed transfer study's data (50 x 4 classes = its 200 training images): the figures
    # say what a head sweep of that study costs
    "per_class": 50,  # training images per class
    "val_per_class": 100,  # validation images per class, from the test split
    # without the cache every epoch repeats the backbone's forward pass (about 30 s an epoch on 2
    # CPU cores): 3 epochs show what the first cached trial saves without a long uncached run
    "epochs": 3,  # epochs per trial
}
FROZEN_CLASSES = ("frog", "horse", "ship", "truck")  # the committed transfer study's "own" classes


def frozen_head(
    data_dir: str | None,
    per_class: int = SETTINGS["per_class"],
    val_per_class: int = SETTINGS["val_per_class"],
    epochs: int = SETTINGS["epochs"],
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Seconds per trial of the same frozen-backbone head training (pretrained EfficientNet-Lite0,
    224 px, CIFAR-10 images of four classes), with the feature cache and without it, in one run.
    The first cached trial computes the features; later trials (other seeds, LRs, ...) reuse them."""
    from studyrunner.engine import features

    over = {
        "model.name": "efficientnet_lite0",
        "model.init": "imagenet",
        "model.freeze": "backbone",
        "data.classes": list(FROZEN_CLASSES),
        "data.train_subset": per_class * len(FROZEN_CLASSES),
        "data.val_from": "test",
        "data.val_subset": val_per_class * len(FROZEN_CLASSES),
        "optim.name": "adam",
        "optim.lr": 1e-3,
        "batch_size": 32,
        "epochs": epochs,
    }
    cfg = resolve_config(apply_overrides(TrainConfig(), over))
    splits = load_splits(cfg.data, data_dir)
    log(
        f"{len(splits.train)} training and {len(splits.val or [])} validation images at {cfg.data.image_size} px, {epochs} epochs"
    )

    def trial(c: TrainConfig) -> tuple[float, float]:
        start = time.perf_counter()
        result = fit(c, splits)
        return time.perf_counter() - start, float(result.best_val_acc or 0.0)

    features._CACHES.clear()  # noqa: SLF001 - the benchmark starts from a cold cache, as a new worker does
    log("full forward pass every batch (model.feature_cache=false) ...")
    full, full_acc = trial(apply_overrides(cfg, {"model.feature_cache": False}))
    log("feature cache, first trial (computes the features) ...")
    first, first_acc = trial(cfg)
    log("feature cache, a later trial (another seed) ...")
    later, _ = trial(apply_overrides(cfg, {"seed": 1}))
    return {
        "full_forward_s_per_trial": full,
        "cached_first_trial_s": first,
        "cached_later_trial_s": later,
        "speedup_later_trials": full / later,
        "speedup_first_trial": full / first,
        "best_val_acc_full": full_acc,
        "best_val_acc_cached": first_acc,
    }

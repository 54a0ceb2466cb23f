"""Training throughput: the documents' pipeline against studyrunner's engine, in one run.

The documents train from ``ImageFolder`` with PIL transforms (RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor, Normalize) through a ``DataLoader`` with worker processes, in
fp32. The engine trains the same network, batch size and augmentation from the decoded uint8
cache with batched on-device augmentation. Both are timed in steady state (after warm-up batches).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from .config import TrainConfig, apply_overrides
from .data import DataError, ImageSet, load_splits, resolve_root
from .engine import build_context, fit, resolve_config, train_one_epoch
from .environment import machine
from .models import CifarAlexNet
from .optim import Schedule, build_optimizer

__all__ = ["run_bench", "documents_pipeline", "engine_pipeline", "trial_overhead", "frozen_head", "machine"]

WARMUP_BATCHES = 5


def _train_folder(root: Path) -> Path:
    for base in (root, root / "cifar10-jpg"):
        if (base / "train").is_dir():
            return base / "train"
    raise DataError(f"bench needs CIFAR-10 image folders: no {root}/train/<class>/*.jpg")


def documents_pipeline(
    train_dir: Path, images: int, batch_size: int, workers: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> float:
    """Images/s of ImageFolder + PIL transforms + DataLoader training, fp32, NCHW."""
    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    ds = datasets.ImageFolder(str(train_dir), transform=tf)
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[: images + WARMUP_BATCHES * batch_size]
    loader = DataLoader(
        Subset(ds, pick.tolist()),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=False,
    )
    torch.manual_seed(0)
    model = CifarAlexNet(len(ds.classes), batchnorm=True)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    model.train()
    seen, start = 0, 0.0
    for i, (x, y) in enumerate(loader):
        if i == WARMUP_BATCHES:
            seen, start = 0, time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def engine_pipeline(
    cfg: TrainConfig, train: ImageSet, mean: tuple[float, float, float], std: tuple[float, float, float], classes: list[str]
) -> float:
    """Images/s of the engine's training loop on ``train`` (after warm-up batches)."""
    ctx, _ = build_context(cfg, classes, mean, std)
    data = train.to(ctx.device)
    opt = build_optimizer(ctx.model.parameters(), cfg.optim)
    schedule = Schedule(opt, cfg.sched, 1, 1)
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    warm = data.subset(torch.arange(min(len(data), WARMUP_BATCHES * cfg.batch_size), device=ctx.device))
    train_one_epoch(ctx, warm, cfg, opt, schedule, gen)
    _, _, speed, _ = train_one_epoch(ctx, data, cfg, opt, schedule, gen)
    return speed


def run_bench(
    data_dir: str | None, images: int, batch_size: int, workers: int, log: Callable[[str], None] = print
) -> list[tuple[str, float, float]]:
    """[(pipeline, images/s, ratio to the documents' pipeline)] measured now, on this machine."""
    base = resolve_config(
        apply_overrides(
            TrainConfig(),
            {
                "batch_size": batch_size,
                "model.batchnorm": True,
                "optim.name": "adam",
                "optim.lr": 5e-4,
                "augment.crop_padding": 4,
                "augment.flip": True,
                "data.val_fraction": 0.0,
                "data.train_subset": images,
            },
        )
    )
    root = resolve_root(base.data, data_dir)
    splits = load_splits(base.data, data_dir)
    log(f"documents' pipeline: ImageFolder + PIL + DataLoader({workers} workers), fp32, {images} images ...")
    doc = documents_pipeline(_train_folder(root), images, batch_size, workers, splits.mean, splits.std)
    rows = [(f"documents' (ImageFolder+PIL+DataLoader x{workers}, fp32)", doc, 1.0)]
    for label, over in (
        ("engine, fp32, NCHW (same arithmetic)", {"precision": "fp32", "channels_last": False}),
        ("engine, defaults (precision=auto, channels_last)", {}),
    ):
        log(f"{label} ...")
        speed = engine_pipeline(apply_overrides(base, over), splits.train, splits.mean, splits.std, splits.classes)
        rows.append((label, speed, speed / doc))
    return rows


def trial_overhead(
    data_dir: str | None, trials: int, epochs: int, subset: int, log: Callable[[str], None] = print
) -> dict[str, float]:
    """Per-trial time spent outside training in a tracked study (SQLite Optuna + SQLite MLflow):
    ask/tell, model build, MLflow runs/params/metrics/artifacts, the PNG. Returns seconds and the
    share of a one-minute trial. Training and epoch-logging time come from the objective's own
    timings (``StudyOutcome.timings``)."""
    import tempfile

    from .objective import StudyEvents
    from .spec import SweepSpec
    from .study import RunOptions, run_study

    spec = SweepSpec.model_validate(
        {
            "study": "overhead",
            "budget": {"n_trials": trials},
            "pruner": {"name": "median", "no_learning_epochs": 0},  # every trial runs all its epochs
            "train": {"epochs": epochs, "data": {"train_subset": subset}},
            "space": {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
        }
    )
    first: list[float] = []

    class FirstTrial(StudyEvents):
        def trial_started(self, number: int, params: dict[str, object]) -> None:
            if not first:
                first.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        opts = RunOptions(storage=f"sqlite:///{tmp}/optuna.db", tracking_uri=f"sqlite:///{tmp}/mlflow.db", data_dir=data_dir)
        load_splits(resolve_config(spec.base_config()).data, data_dir)  # warm the decoded-image cache: not a per-trial cost
        log(f"tracked study: {trials} trials x {epochs} epochs on {subset} images ...")
        t0 = time.perf_counter()
        outcome = run_study(spec, opts, FirstTrial())
        total = time.perf_counter() - t0
    logging = outcome.timings["epoch_logging_s"]
    training = outcome.timings["fit_s"] - logging
    setup = first[0] - t0  # study + MLflow experiment/parent run creation, once per invocation
    per_trial = (total - setup - training) / trials
    return {
        "total_s": total,
        "setup_once_s": setup,
        "training_s": training,
        "overhead_per_trial_s": per_trial,
        "epoch_logging_per_epoch_s": logging / (trials * epochs),
        "share_of_1min_trial": per_trial / 60.0,
    }


FROZEN_CLASSES = ("frog", "horse", "ship", "truck")  # the committed transfer study's "own" classes


def frozen_head(
    data_dir: str | None, per_class: int, val_per_class: int, epochs: int, log: Callable[[str], None] = print
) -> dict[str, float]:
    """Seconds per trial of the same frozen-backbone head training (pretrained EfficientNet-Lite0,
    224 px, CIFAR-10 images of four classes), with the feature cache and without it, in one run.
    The first cached trial computes the features; later trials (other seeds, LRs, ...) reuse them."""
    from . import features

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

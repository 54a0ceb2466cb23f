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

from studyrunner.config import TrainConfig, apply_overrides
from studyrunner.engine.data import load_splits, resolve_root
from studyrunner.engine.decode import DataError, ImageSet
from studyrunner.engine.fit import build_context, train_one_epoch
from studyrunner.engine.models import CifarAlexNet
from studyrunner.engine.optim import Schedule, build_optimizer
from studyrunner.engine.resolve import resolve_config
from studyrunner.track.machine import machine

__all__ = ["run_bench", "documents_pipeline", "engine_pipeline", "machine"]

SETTINGS = {
    # ~10 s of the documents' pipeline at the ~590 images/s it ran on 2 CPU cores: a steady rate,
    # and all three pipelines timed in well under a minute
    "images": 6000,  # training images timed per pipeline
    "batch_size": 64,  # document 004's batch, so the documents' side runs as they wrote it
    "workers": 2,  # DataLoader worker processes of the documents' pipeline: the documents' num_workers
    # the first batches pay once for worker start-up, allocation and kernel selection; a study's
    # epochs do not, so they are run before the clock starts
    "warmup_batches": 5,
}


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
    warmup = SETTINGS["warmup_batches"]
    ds = datasets.ImageFolder(str(train_dir), transform=tf)
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[: images + warmup * batch_size]
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
        if i == warmup:
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
    warm = data.subset(torch.arange(min(len(data), SETTINGS["warmup_batches"] * cfg.batch_size), device=ctx.device))
    train_one_epoch(ctx, warm, cfg, opt, schedule, gen)
    _, _, speed, _ = train_one_epoch(ctx, data, cfg, opt, schedule, gen)
    return speed


def run_bench(
    data_dir: str | None,
    images: int = SETTINGS["images"],
    batch_size: int = SETTINGS["batch_size"],
    workers: int = SETTINGS["workers"],
    log: Callable[[str], None] = print,
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

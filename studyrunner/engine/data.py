"""Image sources, seeded stratified splits, the checks made before decoding, and device batches.

Sources are listed as files first (own image folders) or read from torchvision's CIFAR-10 batches;
class selection, the validation split and the training subset are drawn on them, so only the images
a run uses are ever decoded (by ``decode.py``, into its cache). Splits and subsets are seeded and stratified.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from studyrunner.config import DataConfig
from studyrunner.engine.decode import DataError, FileSet, ImageSet, Progress, decode_files, project_folder, read_cifar_batches

__all__ = [
    "Splits",
    "load_splits",
    "stratified_indices",
    "stratified_split",
    "resolve_root",
    "read_folder",
    "list_folder",
    "available_memory",
    "batches",
    "check_objective_split",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # document 004's normalisation statistics
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    classes: list[str]
    mean: tuple[float, float, float]  # per channel, of the training split, in [0, 1]
    std: tuple[float, float, float]

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in (self.train, self.val, self.test) if s is not None)

    def pinned(self) -> Splits:
        """The splits in page-locked host memory, for fast asynchronous copies of batches to a GPU."""

        def pin(s: ImageSet | None) -> ImageSet | None:
            return None if s is None else ImageSet(s.images.pin_memory(), s.labels.pin_memory(), s.classes)

        return Splits(pin(self.train) or self.train, pin(self.val), pin(self.test), self.classes, self.mean, self.std)

    def to(self, device: torch.device | str) -> Splits:
        def move(s: ImageSet | None) -> ImageSet | None:
            return None if s is None else s.to(device)

        return Splits(self.train.to(device), move(self.val), move(self.test), self.classes, self.mean, self.std)


# --------------------------------------------------------------------------- splits


def stratified_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` indices drawn per class in proportion to class sizes (largest remainder), seeded."""
    n_total = int(labels.numel())
    if n >= n_total:
        return torch.arange(n_total)
    gen = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * n / n_total
    quota = exact.floor().long()
    short = n - int(quota.sum())
    if short:
        quota[torch.argsort(exact - quota, descending=True, stable=True)[:short]] += 1
    picked = []
    for c, q in zip(classes.tolist(), quota.tolist(), strict=False):
        members = torch.nonzero(labels == c).flatten()
        picked.append(members[torch.randperm(len(members), generator=gen)[:q]])
    return torch.sort(torch.cat(picked)).values


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (kept, held-out) with ``fraction`` of every class held out."""
    held = stratified_indices(labels, round(fraction * labels.numel()), seed)
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held


# --------------------------------------------------------------------------- sources


def resolve_root(cfg: DataConfig, data_dir: str | None = None) -> Path:
    """The data root: ``data.path``, else ``--data-dir``, else ``$STUDYRUNNER_DATA_DIR``, else the
    project's ``.data/cifar10-jpg`` (what ``make`` unpacks)."""
    raw = cfg.path or data_dir or os.environ.get("STUDYRUNNER_DATA_DIR", "") or str(project_folder("cifar10-jpg") or "")
    if not raw:
        raise DataError(
            "no data directory: set data.path, pass --data-dir DIR or export STUDYRUNNER_DATA_DIR. "
            "For cifar10 the directory holds cifar-10-batches-py/ or train/<class>/*.jpg and test/<class>/*.jpg."
        )
    root = Path(raw).expanduser()
    if not root.is_dir():
        raise DataError(f"data directory {str(root)!r} does not exist or is not a directory")
    return root


def _class_dirs(folder: Path) -> list[Path]:
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise DataError(f"{folder}: no class folders; expected {folder}/<class>/<image files>")
    return dirs


def list_folder(folder: Path) -> FileSet:
    """The image files of an image-folder tree ``folder/<class>/...``, labelled by class folder."""
    files: list[Path] = []
    labels: list[int] = []
    dirs = _class_dirs(folder)
    for i, d in enumerate(dirs):
        found = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            allowed = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DataError(f"class folder {d} holds no images (looked for {allowed})")
        files += found
        labels += [i] * len(found)
    return FileSet(files, torch.tensor(labels, dtype=torch.int64), [d.name for d in dirs], folder)


def read_folder(folder: Path, cfg: DataConfig, progress: Progress = None) -> ImageSet:
    """An image-folder tree ``folder/<class>/*`` as a cached uint8 ImageSet."""
    return decode_files(list_folder(folder), cfg, progress)


Source = ImageSet | FileSet  # decoded (torchvision's CIFAR batches) or still files (image folders)


def _cifar_sources(root: Path, cfg: DataConfig) -> tuple[Source, Source]:
    for base in (root, root / "cifar10-jpg", root / "cifar10"):
        if (base / "cifar-10-batches-py").is_dir():
            b = base / "cifar-10-batches-py"
            return read_cifar_batches(b, cfg, True), read_cifar_batches(b, cfg, False)
        if (base / "train").is_dir() and (base / "test").is_dir():
            return list_folder(base / "train"), list_folder(base / "test")
    try:  # online machines fetch torchvision's copy; offline ones get the message below
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
        return _cifar_sources(root, cfg)
    except Exception:
        raise DataError(
            f"CIFAR-10 not found under {root} and it could not be downloaded (offline?). Put either "
            f"torchvision's {root}/cifar-10-batches-py/ or image folders {root}/train/<class>/*.jpg and "
            f"{root}/test/<class>/*.jpg there, or point data.path / --data-dir at such a folder."
        ) from None


def _own_sources(root: Path) -> tuple[FileSet, FileSet | None, FileSet | None]:
    """(train, val, test) of an own image-folder tree; val None means 'split from train'."""
    if not (root / "train").is_dir():
        return list_folder(root), None, None
    train = list_folder(root / "train")
    val = list_folder(root / "val") if (root / "val").is_dir() else None
    test = list_folder(root / "test") if (root / "test").is_dir() else None
    return train, val, test


def check_objective_split(metric: str, cfg: DataConfig, data_dir: str | None) -> None:
    """Refuse an objective on a split that own image folders will not have (looked up, not decoded):
    test_ metrics need ``test/``, val_ metrics need ``val/`` or ``data.val_fraction`` > 0."""
    if cfg.dataset != "folder" or not metric.startswith(("test_", "val_")):
        return
    root = resolve_root(cfg, data_dir)
    split = root / "train"
    has_test = split.is_dir() and (root / "test").is_dir() and cfg.val_from != "test"
    has_val = cfg.val_fraction > 0 or (split.is_dir() and ((root / "val").is_dir() or cfg.val_from == "test"))
    if metric.startswith("test_") and not has_test:
        raise DataError(
            f"objective {metric}: {root} has no test split (test metrics need {root}/train/ and {root}/test/ "
            "class folders, and data.val_from=train); use a val_ metric or add a test folder"
        )
    if metric.startswith("val_") and not has_val:
        raise DataError(f"objective {metric}: {root} has no val/ folder and data.val_fraction is 0; set data.val_fraction > 0")


def _check_classes(root: Path, cfg: DataConfig, train: Source, val: Source | None, test: Source | None) -> None:
    """After the class selection: at least two classes, and the same ones in every split."""
    if len(train.classes) < 2:
        where = f"data.classes {list(cfg.classes)}" if cfg.classes else f"{root} has one class folder ({train.classes[0]})"
        raise DataError(f"{where}: a classifier needs at least two classes; add class folders or select more classes")
    for name, s in (("val", val), ("test", test)):
        if s is not None and s.classes != train.classes:
            raise DataError(f"{root / name} has classes {s.classes} but {root / 'train'} has {train.classes}")


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std in [0, 1] of a uint8 batch, computed in chunks to bound memory."""
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(4096):
        x = chunk.double() / 255.0
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (total_sq / n - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())  # type: ignore[return-value]


def select_classes(images: Source, names: tuple[str, ...], root: Path) -> Source:
    """Only the images of the named classes, relabelled 0..k-1 in the source's class order."""
    missing = [n for n in names if n not in images.classes]
    if missing:
        raise DataError(f"data.classes: {missing} not found under {root}; classes there: {', '.join(images.classes)}")
    keep = [i for i, c in enumerate(images.classes) if c in names]
    remap = torch.full((len(images.classes),), -1, dtype=torch.int64)
    remap[keep] = torch.arange(len(keep))
    mask = remap[images.labels] >= 0
    return images.relabelled(torch.nonzero(mask).flatten(), remap[images.labels[mask]], [images.classes[i] for i in keep])


HOST_SHARE = 0.8  # decoded images may take at most this share of the memory available when loading


def _check_fits(cfg: DataConfig, sources: list[Source]) -> None:
    """Refuse, before decoding, images that would not fit in this machine's available memory."""
    count = sum(len(s) for s in sources)
    per_image = 3 * cfg.image_size * cfg.image_size
    available = available_memory()
    if count * per_image <= HOST_SHARE * available:
        return
    fit = int(HOST_SHARE * available // per_image)
    raise DataError(
        f"data: {count} images at {cfg.image_size} px need {count * per_image / 2**30:.1f} GiB decoded, but this machine "
        f"has {available / 2**30:.1f} GiB available; about {fit} images fit at {cfg.image_size} px. Lower "
        "data.train_subset, select fewer data.classes or use a smaller data.image_size."
    )


def available_memory() -> int:
    """Bytes of memory available to this process now (MemAvailable on Linux, else all physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _sources(root: Path, cfg: DataConfig) -> tuple[Source, Source | None, Source | None]:
    """(train, val, test) before decoding, classes selected; val None means 'split from train'."""
    val: Source | None = None
    test: Source | None
    if cfg.dataset == "cifar10":
        train, test = _cifar_sources(root, cfg)
    else:
        train, val, test = _own_sources(root)
    if cfg.classes:
        train = select_classes(train, cfg.classes, root)
        val = None if val is None else select_classes(val, cfg.classes, root)
        test = None if test is None else select_classes(test, cfg.classes, root)
    _check_classes(root, cfg, train, val, test)
    if cfg.val_from == "test":  # the held-out folder validates; nothing is left to test on
        val, test = (val or test), None
        if val is None:
            raise DataError(f"data.val_from=test, but {root} has neither a val/ nor a test/ folder")
    return train, val, test


def load_splits(cfg: DataConfig, data_dir: str | None = None, progress: Progress = None) -> Splits:
    """Train/val/test splits for ``cfg``: val held out from train (stratified, ``split_seed``),
    the training subset drawn after that, normalisation statistics from what remains. Only the
    chosen images are decoded, and only when they fit in memory."""
    root = resolve_root(cfg, data_dir)
    if not cfg.image_size:
        raise ValueError("load_splits needs a resolved data.image_size (engine.resolve_config decides what 0 means)")
    train, val, test = _sources(root, cfg)
    if val is None and cfg.val_fraction > 0:
        if round(cfg.val_fraction * len(train)) < 1:
            raise DataError(
                f"data.val_fraction {cfg.val_fraction:g} of {len(train)} training images rounds to 0 validation images; "
                f"use at least {1 / len(train):.3g} (or 0 for no validation split)"
            )
        keep, held = stratified_split(train.labels, cfg.val_fraction, cfg.split_seed)
        train, val = train.subset(keep), train.subset(held)
    if cfg.train_subset and cfg.train_subset < len(train):
        train = train.subset(stratified_indices(train.labels, cfg.train_subset, cfg.split_seed + 1))
    if val is not None and cfg.val_subset and cfg.val_subset < len(val):
        val = val.subset(stratified_indices(val.labels, cfg.val_subset, cfg.split_seed + 2))
    if test is not None and cfg.test_subset and cfg.test_subset < len(test):
        test = test.subset(stratified_indices(test.labels, cfg.test_subset, cfg.split_seed + 3))
    _check_fits(cfg, [s for s in (train, val, test) if isinstance(s, FileSet)])

    def decoded(s: Source) -> ImageSet:
        return decode_files(s, cfg, progress) if isinstance(s, FileSet) else s

    images = decoded(train)
    mean, std = channel_stats(images.images)
    return Splits(
        images, None if val is None else decoded(val), None if test is None else decoded(test), images.classes, mean, std
    )


def batches(n: int, batch_size: int, generator: torch.Generator | None, device: torch.device) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` items (shuffled when a generator is given) on ``device``."""
    order = torch.randperm(n, generator=generator).to(device) if generator is not None else torch.arange(n, device=device)
    yield from order.split(batch_size)

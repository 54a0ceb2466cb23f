"""Image sources, seeded stratified splits, the checks made before decoding, and device batches.

Sources are listed as files first (own images, labelled by class folder, file-name prefix or CSV: see
``labels.py``) or read from torchvision's CIFAR-10 batches; class selection, the validation split and
the training subset are drawn on them, so only the images a run uses are ever decoded (by
``decode.py``, into its cache). Splits and subsets are seeded and stratified. :func:`check_data` runs
the same steps on the listings alone, for ``validate``; what is worth saying but no error comes back
as notes (``Splits.notes``, ``DataPlan.notes``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from studyrunner.config import DataConfig
from studyrunner.engine.decode import (
    DataError,
    FileSet,
    ImageSet,
    Progress,
    decode_files,
    decode_readable,
    project_folder,
    read_cifar_batches,
    read_cifar_labels,
    skipped_note,
    sniff_unreadable,
    unreadable_message,
)
from studyrunner.engine.labels import csv_sources, list_folder, list_prefixed, parse_labels, shown, split_dirs

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
    "check_data",
    "DataPlan",
]

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
    # warnings about the data, one line each (nested images, a class missing from a split, images left out by
    # data.skip_bad): for the CLI to print; none of them stopped the load
    notes: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in (self.train, self.val, self.test) if s is not None)

    def pinned(self) -> Splits:
        """The splits in page-locked host memory, for fast asynchronous copies of batches to a GPU."""

        def pin(s: ImageSet | None) -> ImageSet | None:
            return None if s is None else ImageSet(s.images.pin_memory(), s.labels.pin_memory(), s.classes)

        return replace(self, train=pin(self.train) or self.train, val=pin(self.val), test=pin(self.test))

    def to(self, device: torch.device | str) -> Splits:
        def move(s: ImageSet | None) -> ImageSet | None:
            return None if s is None else s.to(device)

        return replace(self, train=self.train.to(device), val=move(self.val), test=move(self.test))


@dataclass
class DataPlan:
    """What :func:`load_splits` would load, found from file listings alone (no image decoded)."""

    root: Path
    layout: str  # where the images and their classes come from, in words
    classes: list[str]
    counts: dict[str, list[int]]  # split (train, val, test; only those there are) -> images per class, in class order
    notes: list[str] = field(default_factory=list)  # warnings, one line each, as Splits.notes

    def total(self, split: str) -> int:
        return sum(self.counts.get(split, []))

    def describe(self) -> str:
        """One line for ``validate``: root, layout, classes and images per split."""
        sizes = "  ".join(f"{split} {self.total(split)}" for split in self.counts)
        return f"data {self.root} ({self.layout}): {len(self.classes)} classes ({shown(self.classes, 10)})  {sizes}"


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


def read_folder(folder: Path, cfg: DataConfig, progress: Progress = None) -> ImageSet:
    """An image-folder tree ``folder/<class>/*`` as a cached uint8 ImageSet."""
    return decode_files(list_folder(folder), cfg, progress)


Source = ImageSet | FileSet  # decoded (torchvision's CIFAR batches) or still files (own images)


@dataclass
class _Found:
    """The splits' sources before decoding; val None means 'split from train' (until it is drawn)."""

    train: Source
    val: Source | None
    test: Source | None
    layout: str
    notes: list[str] = field(default_factory=list)

    def named(self) -> list[tuple[str, Source]]:
        return [(n, s) for n, s in (("train", self.train), ("val", self.val), ("test", self.test)) if s is not None]


def _cifar_sources(root: Path, cfg: DataConfig, listing: bool = False) -> _Found:
    """CIFAR-10 as torchvision's batches or train/ + test/ image folders; ``listing``: labels only."""
    for base in (root, root / "cifar10-jpg", root / "cifar10"):
        if (base / "cifar-10-batches-py").is_dir():
            b = base / "cifar-10-batches-py"
            if listing:
                return _Found(read_cifar_labels(b, True), None, read_cifar_labels(b, False), f"CIFAR-10 batches {b}")
            return _Found(read_cifar_batches(b, cfg, True), None, read_cifar_batches(b, cfg, False), f"CIFAR-10 batches {b}")
        dirs = split_dirs(base)
        if "train" in dirs and "test" in dirs:
            return _Found(list_folder(dirs["train"]), None, list_folder(dirs["test"]), f"CIFAR-10 image folders {base}")
    where = (
        f"Put either torchvision's {root}/cifar-10-batches-py/ or image folders {root}/train/<class>/*.jpg and "
        f"{root}/test/<class>/*.jpg there, or point data.path / --data-dir at such a folder."
    )
    if listing:
        raise DataError(f"CIFAR-10 not found under {root} (train and run download torchvision's copy when online). {where}")
    try:  # online machines fetch torchvision's copy; offline ones get the message below
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
        return _cifar_sources(root, cfg)
    except Exception:
        raise DataError(f"CIFAR-10 not found under {root} and it could not be downloaded (offline?). {where}") from None


def _own_sources(root: Path, cfg: DataConfig) -> _Found:
    """(train, val, test) of own images, by ``data.labels``: class folders, name prefixes or CSV files."""
    spec = parse_labels(cfg.labels)
    if spec.kind == "csv":
        sets = csv_sources(root, spec.files, cfg.skip_bad)
        named = [f"{split}={name}" for split, name in spec.files.items()] if len(spec.files) > 1 else list(spec.files.values())
        layout = "labels from " + ", ".join(named)
        return _Found(sets["train"], sets.get("val"), sets.get("test"), layout)
    by = "file-name prefixes" if spec.kind == "prefix" else "class folders"
    dirs = split_dirs(root)
    if "train" not in dirs:
        return _Found(list_prefixed(root) if spec.kind == "prefix" else list_folder(root), None, None, by)
    train = list_prefixed(dirs["train"]) if spec.kind == "prefix" else list_folder(dirs["train"])
    held: list[FileSet | None] = []
    for split in ("val", "test"):
        folder = dirs.get(split)
        if folder is None:
            held.append(None)
        else:
            held.append(list_prefixed(folder, train.classes) if spec.kind == "prefix" else list_folder(folder))
    return _Found(train, held[0], held[1], f"{by} in {' + '.join(d.name + '/' for d in dirs.values())}")


def _split_names(root: Path, cfg: DataConfig) -> set[str]:
    """The splits a source has of its own, looked up, not listed: {} for one folder or one CSV."""
    spec = parse_labels(cfg.labels)
    if cfg.dataset == "folder" and spec.kind == "csv":
        return set(spec.files) if len(spec.files) > 1 else set()
    dirs = split_dirs(root)
    return set(dirs) if "train" in dirs else set()


def check_objective_split(metric: str, cfg: DataConfig, data_dir: str | None) -> None:
    """Refuse an objective on a split that own images will not have (looked up, not decoded): test_
    metrics need a test split (``test/`` or ``test=`` in data.labels), val_ metrics need one of val or
    ``data.val_fraction`` > 0."""
    if cfg.dataset != "folder" or not metric.startswith(("test_", "val_")):
        return
    root = resolve_root(cfg, data_dir)
    names = _split_names(root, cfg)
    has_test = "test" in names and cfg.val_from != "test"
    has_val = cfg.val_fraction > 0 or ("train" in names and ("val" in names or cfg.val_from == "test"))
    if metric.startswith("test_") and not has_test:
        raise DataError(
            f"objective {metric}: {root} has no test split (test metrics need {root}/train/ and {root}/test/ "
            "class folders, or test=FILE.csv in data.labels, and data.val_from=train); use a val_ metric or add a test split"
        )
    if metric.startswith("val_") and not has_val:
        raise DataError(f"objective {metric}: {root} has no val/ folder and data.val_fraction is 0; set data.val_fraction > 0")


def _one_class(root: Path, cfg: DataConfig, train: Source) -> str:
    """Why a source with one class cannot train, and where the classes may be instead."""
    present = torch.unique(train.labels).tolist()
    name = train.classes[present[0]] if present else "none"
    spec = parse_labels(cfg.labels)
    if cfg.classes:
        return f"data.classes {list(cfg.classes)}"
    if spec.kind == "prefix":
        return f"data.labels=prefix: every image name under {root} starts with {name!r}, so there is one class"
    if spec.kind == "csv":
        return f"{spec.files['train']}: every training image found is labelled {name!r}, so there is one class"
    folder = train.root if isinstance(train, FileSet) else root
    inner = folder / name
    subs = sorted(p.name for p in inner.iterdir() if p.is_dir() and not p.name.startswith(".")) if inner.is_dir() else []
    if subs:
        return (
            f"{folder} has one class folder ({name}), which holds folders ({shown(subs)}); if those are the classes, "
            f"point data.path at {inner}"
        )
    return f"{folder} has one class folder ({name})"


def _check_classes(root: Path, cfg: DataConfig, train: Source, val: Source | None, test: Source | None) -> None:
    """After the class selection: training images of at least two classes, and the same classes in every split."""
    if not len(train):
        raise DataError(f"{root}: no training images{_why(train)}; a classifier needs images of two classes")
    if len(torch.unique(train.labels)) < 2:
        raise DataError(f"{_one_class(root, cfg, train)}: a classifier needs at least two classes; add classes or select more")
    for name, s in (("val", val), ("test", test)):
        if s is not None and s.classes != train.classes:
            held, trained = (s.root, train.root) if isinstance(s, FileSet) and isinstance(train, FileSet) else (name, "train")
            raise DataError(f"{held} has classes {s.classes} but {trained} has {train.classes}")
        if s is not None and not len(s):
            raise DataError(f"{root}: the {name} split holds no images{_why(s)}; add some or leave it out")


def _why(s: Source) -> str:
    """What the listing said of an empty source (the rows data.skip_bad left out), in brackets."""
    return f" ({'; '.join(s.notes)})" if isinstance(s, FileSet) and s.notes else ""


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


def _sources(root: Path, cfg: DataConfig, listing: bool = False) -> _Found:
    """(train, val, test) before decoding, classes selected; val None means 'split from train'."""
    found = _cifar_sources(root, cfg, listing) if cfg.dataset == "cifar10" else _own_sources(root, cfg)
    notes = [n for _, s in found.named() if isinstance(s, FileSet) for n in s.notes]
    train, val, test = found.train, found.val, found.test
    if cfg.classes:
        train = select_classes(train, cfg.classes, root)
        val = None if val is None else select_classes(val, cfg.classes, root)
        test = None if test is None else select_classes(test, cfg.classes, root)
    _check_classes(root, cfg, train, val, test)
    if cfg.val_from == "test":  # the held-out folder validates; nothing is left to test on
        val, test = (val or test), None
        if val is None:
            raise DataError(f"data.val_from=test, but {root} has neither a val/ nor a test/ split")
    return _Found(train, val, test, found.layout, notes)


def _drawn(found: _Found, cfg: DataConfig) -> _Found:
    """The validation split held out of train (stratified, ``split_seed``) where there is none, then
    the seeded stratified subsets; still before decoding."""
    train, val, test, layout = found.train, found.val, found.test, found.layout
    if val is None and cfg.val_fraction > 0:
        if round(cfg.val_fraction * len(train)) < 1:
            raise DataError(
                f"data.val_fraction {cfg.val_fraction:g} of {len(train)} training images rounds to 0 validation images; "
                f"use at least {1 / len(train):.3g} (or 0 for no validation split)"
            )
        keep, held = stratified_split(train.labels, cfg.val_fraction, cfg.split_seed)
        train, val = train.subset(keep), train.subset(held)
        layout += f"; val = {cfg.val_fraction:.3g} of train, stratified"
    if cfg.train_subset and cfg.train_subset < len(train):
        train = train.subset(stratified_indices(train.labels, cfg.train_subset, cfg.split_seed + 1))
    if val is not None and cfg.val_subset and cfg.val_subset < len(val):
        val = val.subset(stratified_indices(val.labels, cfg.val_subset, cfg.split_seed + 2))
    if test is not None and cfg.test_subset and cfg.test_subset < len(test):
        test = test.subset(stratified_indices(test.labels, cfg.test_subset, cfg.split_seed + 3))
    return _Found(train, val, test, layout, found.notes)


_SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}


def _class_gaps(classes: list[str], labels: dict[str, torch.Tensor]) -> list[str]:
    """A note per split that misses some classes (a class too small to reach every split: a 1-image class
    gets no validation image), naming them with their images in all splits."""
    counts = {split: torch.bincount(y.cpu(), minlength=len(classes)).tolist() for split, y in labels.items()}
    total = [sum(c[i] for c in counts.values()) for i in range(len(classes))]
    notes = []
    for split, c in counts.items():
        empty = [f"{classes[i]} ({total[i]} image{'s' if total[i] != 1 else ''} in all)" for i, n in enumerate(c) if n == 0]
        if not empty:
            continue
        one = len(empty) == 1
        it, its = ("it", "its") if one else ("them", "their")
        what = f"the model never sees {it}" if split == "train" else f"{its} {_SPLIT_WORDS[split]} accuracy is not measured"
        notes.append(
            f"data: {'class' if one else 'classes'} {shown(empty)} {'has' if one else 'have'} no {_SPLIT_WORDS[split]} image: "
            f"{what}; add images to {it} or drop {it} with data.classes"
        )
    return notes


def _decoded(found: _Found, cfg: DataConfig, root: Path, progress: Progress) -> tuple[dict[str, ImageSet], list[str]]:
    """Every split decoded in one pass over its files; the unreadable files of all splits are named
    together in one DataError, or with ``data.skip_bad`` left out (a note says which)."""
    out: dict[str, ImageSet] = {}
    bad: list[tuple[Path, str]] = []
    total = 0
    for name, s in found.named():
        if isinstance(s, FileSet):
            out[name], failed = decode_readable(s, cfg, progress)
            bad += failed
            total += len(s)
        else:
            out[name] = s
    if bad and not cfg.skip_bad:
        raise DataError(unreadable_message(bad, total, root))
    notes = [skipped_note(bad, total, root)] if bad else []
    if not len(out["train"]):
        raise DataError(f"{root}: none of the {len(found.train)} training images can be read (all left out by data.skip_bad)")
    return out, notes


def load_splits(cfg: DataConfig, data_dir: str | None = None, progress: Progress = None) -> Splits:
    """Train/val/test splits for ``cfg``: val held out from train (stratified, ``split_seed``),
    the training subset drawn after that, normalisation statistics from what remains. Only the
    chosen images are decoded, and only when they fit in memory. Warnings come back as ``notes``."""
    root = resolve_root(cfg, data_dir)
    if not cfg.image_size:
        raise ValueError("load_splits needs a resolved data.image_size (engine.resolve_config decides what 0 means)")
    found = _drawn(_sources(root, cfg), cfg)
    _check_fits(cfg, [s for _, s in found.named() if isinstance(s, FileSet)])
    sets, skipped = _decoded(found, cfg, root, progress)
    train = sets["train"]
    mean, std = channel_stats(train.images)
    notes = [*found.notes, *skipped, *_class_gaps(train.classes, {n: s.labels for n, s in sets.items()})]
    return Splits(train, sets.get("val"), sets.get("test"), train.classes, mean, std, notes)


def check_data(cfg: DataConfig, data_dir: str | None = None) -> DataPlan:
    """The data ``cfg`` trains on, checked from file listings alone, for ``validate``: no image is decoded.
    Refuses (DataError) what :func:`load_splits` would refuse before decoding (no class folders, one
    class, an empty folder or class folder, CSV rows whose file is missing, a split too small to train,
    more images than fit in memory when data.image_size is set) and files that are plainly no image (Git
    LFS pointers, empty files; left out with data.skip_bad, which the counts do not subtract)."""
    root = resolve_root(cfg, data_dir)
    found = _drawn(_sources(root, cfg, listing=True), cfg)
    files = [s for _, s in found.named() if isinstance(s, FileSet)]
    if cfg.image_size:
        _check_fits(cfg, list(files))
    listed = [f for s in files for f in s.files]
    bad = sniff_unreadable(listed)
    if bad and not cfg.skip_bad:
        raise DataError(unreadable_message(bad, len(listed), root))
    classes = found.train.classes
    labels = {name: s.labels for name, s in found.named()}
    notes = [*found.notes, *([skipped_note(bad, len(listed), root)] if bad else []), *_class_gaps(classes, labels)]
    counts = {name: torch.bincount(y, minlength=len(classes)).tolist() for name, y in labels.items()}
    return DataPlan(root, found.layout, list(classes), counts, notes)


def batches(n: int, batch_size: int, generator: torch.Generator | None, device: torch.device) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` items (shuffled when a generator is given) on ``device``."""
    order = torch.randperm(n, generator=generator).to(device) if generator is not None else torch.arange(n, device=device)
    yield from order.split(batch_size)

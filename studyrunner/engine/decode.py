"""Decoding and the decoded-image cache: image files (a :class:`FileSet`, files and labels not decoded
yet) become a uint8 tensor ``[N, 3, S, S]`` (an :class:`ImageSet`), decoded once from any PIL mode,
resized and centre-cropped, and cached on disk keyed by the files chosen, their sizes and modification
times, so later runs and other worker processes load a tensor instead of decoding thousands of files;
torchvision's CIFAR-10 pickles are read into the same cache. It also holds the types and the error
(:class:`DataError`) that ``data.py``'s sources and splits are built from.

Unreadable files do not stop the pass: every one is collected with its reason (a Git LFS pointer, an
empty file, a web page saved as .jpg, PIL's own reason) and they are reported together, or with
``data.skip_bad`` left out; the cache remembers which they were.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from studyrunner.config import DataConfig
from studyrunner.engine import cachefile
from studyrunner.errors import StudyrunnerError

__all__ = [
    "relative",
    "DataError",
    "ImageSet",
    "FileSet",
    "project_folder",
    "cache_root",
    "decode_files",
    "read_cifar_batches",
]

CACHE_VERSION = 3
Progress = Callable[[str, int, int], None] | None  # (what, done, total)


class DataError(StudyrunnerError):
    """A data path, folder or file that cannot be used; the message says which and why."""


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: torch.Tensor  # int64 [N]
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.classes)

    def relabelled(self, keep: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> ImageSet:
        return ImageSet(self.images[keep], labels, classes)

    def to(self, device: torch.device | str) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes)

    def take(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) at ``index`` on ``device``, wherever the set is held (device or host memory)."""
        if self.images.device == index.device:
            return self.images[index], self.labels[index]
        host = index.to(self.images.device)
        return self.images[host].to(device, non_blocking=True), self.labels[host].to(device, non_blocking=True)

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()


@dataclass
class FileSet:
    """Image files with their labels, not decoded yet. Class selection, the validation split and
    the training subset are drawn on these, so only the images a run uses are ever decoded."""

    files: list[Path]
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    root: Path  # the folder they were listed from (names it in messages and cache keys)
    notes: list[str] = field(default_factory=list)  # what the listing found worth saying (not errors)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, index: torch.Tensor) -> FileSet:
        return FileSet([self.files[i] for i in index.tolist()], self.labels[index], self.classes, self.root)

    def relabelled(self, keep: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> FileSet:
        return FileSet([self.files[i] for i in keep.tolist()], labels, classes, self.root)


def project_folder(name: str) -> Path | None:
    """``.data/NAME`` of the project this command runs in (the working directory or a parent), as
    ``make`` unpacks it: found without any environment variable."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        candidate = folder / ".data" / name
        if candidate.is_dir():
            return candidate
    return None


def _fingerprint(files: list[Path], extra: str) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{extra}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _to_rgb(src: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: palettes and alpha via RGBA, 16/32-bit and float grayscale scaled
    to 0..255 (not clipped), EXIF orientation applied."""
    src = ImageOps.exif_transpose(src) or src
    if src.mode in ("P", "PA", "LA"):
        return src.convert("RGBA").convert("RGB")
    if src.mode.startswith("I") or src.mode == "F":
        import numpy as np

        a = np.asarray(src, dtype=np.float64)
        top = 65535.0 if src.mode.startswith("I;16") or (src.mode == "I" and a.max(initial=0) > 255) else 255.0
        if src.mode == "F" and a.max(initial=0) <= 1.0:
            top = 1.0
        return Image.fromarray(np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8)).convert("RGB")
    return src.convert("RGB")


class UnreadableImage(DataError):
    """One image file that cannot be decoded, with the reason in words."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = path, reason


LFS_POINTER = "Git LFS pointer, not an image: fetch the real files with git lfs pull"
SHOWN = 5  # unreadable files named in a message


def why_unreadable(path: Path, exc: Exception | None = None) -> str:
    """Why ``path`` is no image, from its first bytes (a Git LFS pointer, an empty file, a web page saved
    under an image name), else from PIL's exception; "" when its first bytes say nothing and there is none."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as err:
        return f"cannot open it ({err.strerror or err})"
    if not head:
        return "empty file (0 bytes)"
    if head.startswith(b"version https://git-lfs"):
        return LFS_POINTER
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page, not an image (a failed download?)"
    if exc is None:
        return ""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image format PIL can read"
    return str(exc) or type(exc).__name__


def sniff_unreadable(files: list[Path], below: int = 256) -> list[tuple[Path, str]]:
    """The files under ``below`` bytes whose first bytes show they are no image (LFS pointers, empty
    files), without decoding anything: what ``validate`` can tell from a listing."""
    out = []
    for f in files:
        try:
            small = f.stat().st_size < below
        except OSError as err:
            out.append((f, f"cannot open it ({err.strerror or err})"))
            continue
        why = why_unreadable(f) if small else ""
        if why:
            out.append((f, why))
    return out


def unreadable_message(bad: list[tuple[Path, str]], total: int, root: Path) -> str:
    """All unreadable images in one message: how many, the first few with their reasons, what to do."""
    named = "; ".join(f"{relative(p, root)}: {why}" for p, why in bad[:SHOWN])
    more = f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    lfs = sum(why == LFS_POINTER for _, why in bad)
    hint = f" {lfs} of them are Git LFS pointers: run git lfs pull where the data was cloned." if lfs > 1 else ""
    them = "them" if len(bad) > 1 else "it"
    return (
        f"cannot read image{'s' if len(bad) > 1 else ''} ({len(bad)} of {total} under {root}): {named}{more}.{hint} "
        f"Fix or remove {them}, or set data.skip_bad=true to train without {them}"
    )


def skipped_note(bad: list[tuple[Path, str]], total: int, root: Path) -> str:
    names = ", ".join(relative(p, root) for p, _ in bad[:SHOWN]) + (f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else "")
    return f"data.skip_bad: left out {len(bad)} unreadable image{'s' if len(bad) > 1 else ''} of {total}: {names}"


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when it lies under it (shorter messages), else as it is."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _read(path: Path, size: int, resize: int) -> torch.Tensor:
    with Image.open(path) as src:
        im = _to_rgb(src)
        if im.size != (size, size):
            w, h = im.size
            scale = resize / min(w, h)
            im = im.resize((max(resize, round(w * scale)), max(resize, round(h * scale))), Image.Resampling.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
        data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1)


def _decode(path: Path, size: int, resize: int = 0) -> torch.Tensor:
    """One image of any mode -> uint8 [3, size, size]: shorter side resized to ``resize`` (>= size),
    centre-cropped to ``size`` (document 000's Resize(256) + CenterCrop(224) is resize 256, size 224).
    A file that is no readable image raises :class:`UnreadableImage` saying why."""
    try:
        return _read(path, size, max(resize, size))
    except Image.DecompressionBombError:
        raise UnreadableImage(
            path,
            f"it has more pixels than PIL's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS} x 2); "
            "shrink it or remove it from the folder",
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:  # ValueError: a mode PIL cannot convert
        raise UnreadableImage(path, why_unreadable(path, exc)) from None


def _decode_all(
    files: list[Path], size: int, resize: int, what: str, progress: Progress
) -> tuple[torch.Tensor, list[tuple[int, str]]]:
    """All ``files`` decoded in one pass; the unreadable ones (index, reason) are collected, their rows left at 0."""
    out = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    bad: list[tuple[int, str]] = []

    def attempt(p: Path) -> torch.Tensor | str:
        try:
            return _decode(p, size, resize)
        except UnreadableImage as exc:
            return exc.reason

    chunk = 512
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(files), chunk):
            for j, img in enumerate(pool.map(attempt, files[start : start + chunk])):
                if isinstance(img, str):
                    bad.append((start + j, img))
                else:
                    out[start + j] = img
            if progress:
                progress(what, min(start + chunk, len(files)), len(files))
    return out, bad


def cache_root(cfg: DataConfig) -> Path:
    """Where decoded images (and a frozen backbone's features) are cached."""
    raw = cfg.cache_dir or os.environ.get("STUDYRUNNER_CACHE_DIR") or str(project_folder("cache") or "~/.cache/studyrunner")
    return Path(raw).expanduser()


def _cache_path(cfg: DataConfig, what: str) -> Path:
    name = hashlib.sha1(f"{what}|{cfg.image_size}|{cfg.resize}".encode()).hexdigest()[:16]
    return cache_root(cfg) / f"{name}.pt"


def _cached(cfg: DataConfig, files: list[Path], what: str, build: Callable[[], ImageSet]) -> ImageSet:
    """Load ``build()``'s result from the cache when the source is unchanged, else rebuild and store."""
    key = _fingerprint(files, f"{cfg.image_size}|{cfg.resize}")
    path = _cache_path(cfg, what)
    blob = cachefile.load(path, key)
    if blob is not None:
        return ImageSet(blob["images"], blob["labels"], list(blob["classes"]))
    data = build()
    cachefile.save(path, key, {"images": data.images, "labels": data.labels}, classes=data.classes)
    return data


def decode_readable(fs: FileSet, cfg: DataConfig, progress: Progress = None) -> tuple[ImageSet, list[tuple[Path, str]]]:
    """The readable files of ``fs`` decoded at ``data.image_size`` into a cached uint8 ImageSet, and the
    unreadable ones with the reason for each, all found in one pass. The cache is keyed by the very files
    chosen, their sizes and modification times, and remembers which could not be read; labels and
    classes are always the FileSet's (a CSV may relabel the same files)."""
    key = _fingerprint(fs.files, f"{cfg.image_size}|{cfg.resize}")
    listing = hashlib.sha1("\n".join(map(str, fs.files)).encode()).hexdigest()
    path = _cache_path(cfg, f"{fs.root.resolve()}|{listing}|{fs.classes}")
    blob = cachefile.load(path, key)
    if blob is None:
        images, failed = _decode_all(fs.files, cfg.image_size, cfg.resize, f"decoding {fs.root.name}", progress)
        keep = torch.ones(len(fs), dtype=torch.bool)
        keep[[i for i, _ in failed]] = False
        kept = torch.nonzero(keep).flatten()
        images = images[kept] if failed else images
        bad: list[list[Any]] = [[i, why] for i, why in failed]
        cachefile.save(path, key, {"images": images, "labels": fs.labels[kept], "kept": kept}, classes=fs.classes, bad=bad)
    else:
        images, bad = blob["images"], [[int(i), str(why)] for i, why in blob.get("bad", [])]
        kept = blob.get("kept", torch.arange(len(fs)))  # caches written before unreadable files were kept hold all files
    return ImageSet(images, fs.labels[kept], fs.classes), [(fs.files[i], why) for i, why in bad]


def decode_files(fs: FileSet, cfg: DataConfig, progress: Progress = None) -> ImageSet:
    """The files of ``fs`` decoded at ``data.image_size`` into a cached uint8 ImageSet. Unreadable
    files are all named in one DataError, or with ``data.skip_bad`` left out."""
    images, bad = decode_readable(fs, cfg, progress)
    if bad and not cfg.skip_bad:
        raise DataError(unreadable_message(bad, len(fs), fs.root))
    return images


def _cifar_files(folder: Path, train: bool) -> list[Path]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    files = [folder / n for n in names]
    missing = [str(f) for f in [*files, folder / "batches.meta"] if not f.exists()]
    if missing:
        raise DataError(f"incomplete CIFAR-10 folder {folder}: missing {', '.join(missing)}")
    return files


def read_cifar_labels(folder: Path, train: bool) -> ImageSet:
    """The labels and classes of torchvision's CIFAR-10 pickles, with no image kept (images of size 0):
    what a data check needs to count and split them."""
    labels = []
    for f in _cifar_files(folder, train):
        with open(f, "rb") as fh:
            labels.append(torch.tensor(pickle.load(fh, encoding="latin1")["labels"], dtype=torch.int64))
    with open(folder / "batches.meta", "rb") as fh:
        classes = list(pickle.load(fh, encoding="latin1")["label_names"])
    y = torch.cat(labels)
    return ImageSet(torch.empty((len(y), 3, 0, 0), dtype=torch.uint8), y, classes)


def read_cifar_batches(folder: Path, cfg: DataConfig, train: bool) -> ImageSet:
    """torchvision's ``cifar-10-batches-py`` pickles as a cached ImageSet."""
    files = _cifar_files(folder, train)

    def build() -> ImageSet:
        xs, ys = [], []
        for f in files:
            with open(f, "rb") as fh:
                d = pickle.load(fh, encoding="latin1")
            xs.append(torch.tensor(d["data"], dtype=torch.uint8).view(-1, 3, 32, 32))
            ys.append(torch.tensor(d["labels"], dtype=torch.int64))
        with open(folder / "batches.meta", "rb") as fh:
            classes = list(pickle.load(fh, encoding="latin1")["label_names"])
        images = torch.cat(xs)
        if cfg.image_size != 32:
            images = torch.cat(  # in chunks: one float copy of 60,000 large images would not fit in memory
                [
                    torch.nn.functional.interpolate(chunk.float(), size=cfg.image_size, mode="bilinear")
                    .round()
                    .clamp(0, 255)
                    .to(torch.uint8)
                    for chunk in images.split(1000)
                ]
            )
        return ImageSet(images, torch.cat(ys), classes)

    return _cached(cfg, files, f"{folder.resolve()}|{train}", build)

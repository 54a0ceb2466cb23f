"""Where own images' classes come from, before anything is decoded: class folders (``root/<class>/``),
file-name prefixes (``data.labels: prefix``: ``fist_0001.jpg`` is class ``fist``) or CSV files of
``path,label`` rows (``data.labels: labels.csv`` or ``train=a.csv,val=b.csv,test=c.csv``). Each gives
the same :class:`FileSet`, so decoding and the decoded-image cache are shared by all of them.

Hidden files and folders, ``__MACOSX/`` folders and AppleDouble ``._*`` files (what macOS leaves in a
zip) are never images. What is worth knowing but no error (images nested in sub-folders of a class
folder, images beside the class folders, rows left out) becomes a note on the FileSet.

Internal to the engine's data sources: ``data.py`` re-exports :func:`list_folder`.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

import torch

from studyrunner.config import ConfigError
from studyrunner.engine.decode import DataError, FileSet, relative

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
UNREAD_PHOTOS = frozenset({".heic", ".heif"})  # phone photos PIL cannot read: named, not silently dropped
SPLITS = ("train", "val", "test")
SHOWN = 5  # names shown in a message about many files
LABELS_HELP = (
    "data.labels must be '' (class folders), prefix (a file name's leading letters are its class), FILE.csv "
    "(rows of path,label) or train=A.csv,val=B.csv,test=C.csv (val and test optional)"
)
_LETTERS = re.compile(r"[^\W\d_]+")  # leading letters: up to the first digit, separator or dot
_DRIVE = re.compile(r"^[A-Za-z]:")
_PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "image", "image_path", "img", "name")
_LABEL_COLUMNS = ("label", "class", "category", "target")


def shown(items: list[str], n: int = SHOWN) -> str:
    """``a, b, c and 4 more``: the first few of many names."""
    head = ", ".join(items[:n])
    return f"{head} and {len(items) - n} more" if len(items) > n else head


def plural(n: int, word: str) -> str:
    """``1 image``, ``3 images``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def skipped_name(name: str) -> bool:
    """Hidden files and folders (``._x.jpg`` AppleDouble files too) and macOS zip debris."""
    return name.startswith(".") or name == "__MACOSX"


def is_image_name(name: str) -> bool:
    return not skipped_name(name) and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def walk_images(folder: Path) -> tuple[list[Path], int]:
    """(the image files under ``folder``, sorted; how many HEIC/HEIF photos were passed over). Hidden
    and ``__MACOSX`` folders are not entered, nor symlinked sub-folders (as ``Path.rglob``)."""
    found: list[Path] = []
    unread = 0
    stack = [folder]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as entries:
                for e in entries:
                    if skipped_name(e.name):
                        continue
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    elif is_image_name(e.name) and e.is_file():
                        found.append(Path(e.path))
                    else:
                        unread += os.path.splitext(e.name)[1].lower() in UNREAD_PHOTOS
        except OSError as exc:
            raise DataError(f"cannot list {here}: {exc.strerror or exc}") from None
    return sorted(found), unread


def _unread_note(folder: Path, unread: int) -> str:
    return f"{folder}: {plural(unread, '.heic/.heif photo')} ignored (PIL cannot read them); convert them to JPEG to use them"


# --------------------------------------------------------------------------- class folders

SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


def split_dirs(root: Path) -> dict[str, Path]:
    """The split folders of ``root``, in any case: train/ (Training/), val/ (valid/, validation/),
    test/ (testing/), as datasets come; {} when there is none."""
    try:
        names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not skipped_name(e.name))
    except OSError:
        return {}
    out: dict[str, Path] = {}
    for split, aliases in SPLIT_FOLDERS.items():
        found = [n for n in names if n.casefold() in aliases]
        if len(found) > 1:
            raise DataError(f"{root} has several {split} folders ({', '.join(found)}); keep one")
        if found:
            out[split] = root / found[0]
    return out


def class_dirs(folder: Path) -> tuple[list[Path], list[Path]]:
    """(the class folders of ``folder``, sorted; the images lying beside them, in no class)."""
    try:
        entries = sorted((e for e in os.scandir(folder) if not skipped_name(e.name)), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"cannot list {folder}: {exc.strerror or exc}") from None
    dirs = [Path(e.path) for e in entries if e.is_dir()]
    loose = [Path(e.path) for e in entries if not e.is_dir() and is_image_name(e.name)]
    if not dirs:
        raise DataError(_no_class_folders(folder, loose, len(entries)))
    return dirs, loose


def _no_class_folders(folder: Path, loose: list[Path], entries: int) -> str:
    expected = f"expected {folder}/<class>/<image files>"
    if not entries:
        return f"{folder} is empty; {expected}"
    if not loose:
        return f"{folder} holds no class folders and no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}); {expected}"
    prefixes = looks_prefixed([p.name for p in loose])
    hint = (
        f"the names look like <class>_<number> ({shown(prefixes)}): set data.labels: prefix to label them by name"
        if prefixes
        else "sort them into one folder per class, or label them with data.labels: FILE.csv (rows of path,label)"
    )
    return f"{folder} holds {plural(len(loose), 'image')} but no class folders ({expected}); {hint}"


def list_folder(folder: Path) -> FileSet:
    """The image files of an image-folder tree ``folder/<class>/...``, labelled by class folder. Images
    in sub-folders of a class folder belong to that class (a note says how many)."""
    files: list[Path] = []
    labels: list[int] = []
    nested: dict[str, list[Path]] = {}
    unread = 0
    dirs, loose = class_dirs(folder)
    for i, d in enumerate(dirs):
        found, passed = walk_images(d)
        unread += passed
        if not found:
            heic = f"; it holds {passed} .heic/.heif photos, which PIL cannot read: convert them to JPEG" if passed else ""
            raise DataError(f"class folder {d} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))}){heic}")
        deeper = [p for p in found if p.parent != d]
        if deeper:
            nested[d.name] = deeper
        files += found
        labels += [i] * len(found)
    notes = [_nested_note(folder, nested)] if nested else []
    if loose:
        notes.append(f"{folder}: {plural(len(loose), 'image')} beside the class folders, in no class ({loose[0].name}): ignored")
    if unread:
        notes.append(_unread_note(folder, unread))
    return FileSet(files, torch.tensor(labels, dtype=torch.int64), [d.name for d in dirs], folder, notes)


def _nested_note(folder: Path, nested: dict[str, list[Path]]) -> str:
    total = sum(len(v) for v in nested.values())
    where = "; ".join(f"{c}: {len(v)}, e.g. {relative(v[0], folder)}" for c, v in list(nested.items())[:SHOWN])
    more = f"; and {len(nested) - SHOWN} more class folders" if len(nested) > SHOWN else ""
    return f"{folder}: {plural(total, 'image')} in sub-folders of class folders ({where}{more}): used, as that class"


# --------------------------------------------------------------------------- file-name prefixes


def prefix_of(name: str) -> str:
    """A file name's class under ``data.labels: prefix``: its leading letters (``fist_0001.jpg`` ->
    ``fist``, ``palm-12.png`` -> ``palm``, ``okay7.jpg`` -> ``okay``); "" when it starts otherwise."""
    m = _LETTERS.match(name)
    return m.group(0) if m else ""


def looks_prefixed(names: list[str]) -> list[str]:
    """The prefixes when image names look like ``<class>_<number>`` (every name has one, and at least
    two classes of several images); else []."""
    prefixes = [prefix_of(n) for n in names]
    if not all(prefixes) or any(prefix_of(n) == os.path.splitext(n)[0] for n in names):
        return []
    counts = Counter(prefixes)
    return sorted(counts) if 2 <= len(counts) < len(names) else []


def list_prefixed(folder: Path, classes: list[str] | None = None) -> FileSet:
    """The images under ``folder`` labelled by their names' leading letters; ``classes`` (the training
    split's) fixes the class list for a val or test folder."""
    files, unread = walk_images(folder)
    if not files:
        raise DataError(f"data.labels=prefix: {folder} holds no images (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    names = [prefix_of(p.name) for p in files]
    bad = [relative(p, folder) for p, n in zip(files, names, strict=True) if not n]
    if bad:
        raise DataError(
            f"data.labels=prefix: {plural(len(bad), 'file name')} under {folder} do not start with letters naming a class: "
            f"{shown(bad)}; rename them like fist_0001.jpg, or label them with data.labels: FILE.csv"
        )
    classes = classes or sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise DataError(f"{folder}: the names' classes {shown(unknown)} are not among train's classes ({', '.join(classes)})")
    notes = [_unread_note(folder, unread)] if unread else []
    return FileSet(files, torch.tensor([index[n] for n in names], dtype=torch.int64), classes, folder, notes)


# --------------------------------------------------------------------------- data.labels and CSV files


@dataclass(frozen=True)
class LabelSource:
    """``data.labels`` read: class folders, name prefixes, or CSV files by split (one CSV = train only,
    validation split from it by ``data.val_fraction``)."""

    kind: Literal["folders", "prefix", "csv"]
    files: dict[str, str] = field(default_factory=dict)  # split -> CSV file as written


def parse_labels(text: str) -> LabelSource:
    t = text.strip()
    if not t:
        return LabelSource("folders")
    if t.lower() == "prefix":
        return LabelSource("prefix")
    if "=" not in t and t.lower().endswith(".csv"):
        return LabelSource("csv", {"train": t})
    files: dict[str, str] = {}
    for part in t.split(","):
        split, sep, name = (x.strip() for x in part.partition("="))
        if not sep or split not in SPLITS or split in files or not name.lower().endswith(".csv"):
            raise ConfigError(f"{LABELS_HELP}; got {text!r}", "data.labels")
        files[split] = name
    if "train" not in files:
        raise ConfigError(f"{LABELS_HELP}; got {text!r}, which names no train= CSV", "data.labels")
    return LabelSource("csv", files)


def csv_file(name: str, root: Path) -> Path:
    """A CSV named in data.labels: absolute, else in the data root, else in the working directory."""
    path = Path(name).expanduser()
    for candidate in [path] if path.is_absolute() else [root / path, path]:
        if candidate.is_file():
            return candidate
    where = str(path) if path.is_absolute() else f"{root} or the working directory"
    raise DataError(f"data.labels: {name} not found (looked in {where})")


def _delimiter(line: str) -> str:
    return max(",;\t", key=line.count) if any(d in line for d in ",;\t") else ","


def _is_header(row: list[str]) -> bool:
    """The first row is a header when its label column is literally label/class, or its path column
    is no image name."""
    image = PureWindowsPath(row[0]).suffix.lower() in IMAGE_SUFFIXES
    return len(row) >= 2 and (row[1].lower() in ("label", "class") or not image)


def _columns(header: list[str]) -> tuple[int, int]:
    """(path column, label column) by the header's names, else the first two."""
    low = [h.strip().lower() for h in header]
    path = next((low.index(n) for n in _PATH_COLUMNS if n in low), 0)
    label = next((low.index(n) for n in _LABEL_COLUMNS if n in low and low.index(n) != path), 1 if path == 0 else 0)
    return path, label


def read_label_rows(path: Path) -> list[tuple[int, str, str]]:
    """(line, path, label) of each row of a labels CSV; a header row is detected and dropped;
    ``,`` ``;`` or tab separated; UTF-8 (with or without a BOM) or Latin-1."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"data.labels: cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    first = next((line for line in text.splitlines() if line.strip()), "")
    rows = [(n, [c.strip() for c in r]) for n, r in enumerate(csv.reader(io.StringIO(text), delimiter=_delimiter(first)), 1)]
    rows = [(n, r) for n, r in rows if any(r)]
    cols = (0, 1)
    if rows and _is_header(rows[0][1]):
        cols = _columns(rows[0][1])
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path} holds no rows; expected rows of path,label (a header row is optional)")
    out = []
    for n, r in rows:
        if len(r) <= max(cols) or not r[cols[0]] or not r[cols[1]]:
            raise DataError(f"{path}:{n}: expected path,label, got {','.join(r)!r}")
        out.append((n, r[cols[0]], r[cols[1]]))
    return out


class NameIndex:
    """The image files under a root by lower-cased file name, listed by one walk when first asked."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._by_name: dict[str, list[Path]] | None = None

    def find(self, parts: tuple[str, ...]) -> Path | str:
        """The one file named ``parts[-1]`` (ties broken by the most trailing folders in common), or why not."""
        if self._by_name is None:
            self._by_name = {}
            for p in walk_images(self.root)[0]:
                self._by_name.setdefault(p.name.casefold(), []).append(p)
        found = self._by_name.get(parts[-1].casefold(), []) if parts else []
        if len(found) <= 1:
            return found[0] if found else "not found"
        want = [s.casefold() for s in reversed(parts)]

        def common(p: Path) -> int:
            have = [s.casefold() for s in reversed(p.parts)]
            return next((i for i, (a, b) in enumerate(zip(want, have, strict=False)) if a != b), min(len(want), len(have)))

        score = sorted(((common(p), p) for p in found), reverse=True)
        if score[0][0] > score[1][0]:
            return score[0][1]
        return "found several times by name: " + ", ".join(relative(p, self.root) for _, p in score[:3])


def locate(raw: str, root: Path, index: NameIndex) -> Path | str:
    """The file a CSV row names: as given (absolute, or relative to ``root``; Windows paths too), else
    found by file name under ``root``; or why none."""
    pure: PurePosixPath | PureWindowsPath = PureWindowsPath(raw) if "\\" in raw or _DRIVE.match(raw) else PurePosixPath(raw)
    given = Path(raw) if pure.anchor else root.joinpath(*pure.parts)
    if given.is_file():
        return given
    return index.find(pure.parts)


def csv_sources(root: Path, files: dict[str, str], skip_bad: bool) -> dict[str, FileSet]:
    """A FileSet per split of ``data.labels``' CSV files. Classes are the train CSV's labels, sorted; a
    val or test label outside them is refused. Rows whose file is not found are named in one message:
    an error, or with ``skip_bad`` left out (a note says which)."""
    paths = {split: csv_file(name, root) for split, name in files.items()}
    rows = {split: read_label_rows(p) for split, p in paths.items()}
    classes = sorted({label for _, _, label in rows["train"]})
    index = NameIndex(root)
    sets = {split: _csv_files(root, paths[split], rows[split], classes, index, skip_bad) for split in paths}
    train = set(sets["train"].files)
    for split in ("val", "test"):
        both = sorted(train & set(sets[split].files)) if split in sets else []
        if both:
            sets[split].notes.append(
                f"{plural(len(both), 'image')} in both the train and the {split} CSV (e.g. {relative(both[0], root)}); "
                f"the {split} accuracy is not measured on held-out images"
            )
    return sets


def _csv_files(
    root: Path, path: Path, rows: list[tuple[int, str, str]], classes: list[str], index: NameIndex, skip_bad: bool
) -> FileSet:
    where = {c: i for i, c in enumerate(classes)}
    unknown = sorted({label for _, _, label in rows} - set(where))
    if unknown:
        raise DataError(f"{path}: labels {shown(unknown)} are not among the train CSV's labels ({shown(classes, 20)})")
    chosen: dict[Path, int] = {}
    missing: list[str] = []
    for line, raw, label in rows:
        found = locate(raw, root, index)
        if isinstance(found, str):
            missing.append(raw if found == "not found" else f"{raw} ({found})")
        elif chosen.setdefault(found, where[label]) != where[label]:
            raise DataError(f"{path}:{line}: {raw} is labelled both {classes[chosen[found]]} and {label}; keep one")
    notes = []
    if missing:
        what = (
            f"{path.name}: no file found for {len(missing)} of {plural(len(rows), 'row')} (looked as given, "
            f"relative to {root} and by file name under it): {shown(missing)}"
        )
        if not skip_bad:
            raise DataError(f"{what}. Fix the paths, or set data.skip_bad=true to train without them")
        notes.append(f"data.skip_bad: left out {what}")
    kept = sorted(chosen)
    return FileSet(kept, torch.tensor([chosen[f] for f in kept], dtype=torch.int64), classes, root, notes)

"""Tiny shared fixtures: synthetic learnable tensors and image-folder trees written to tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from studyrunner.config import TrainConfig, apply_overrides
from studyrunner.engine.data import Splits
from studyrunner.engine.decode import ImageSet
from studyrunner.engine.resolve import resolve_config
from studyrunner.report.results import StepResult, TrialResult
from studyrunner.search.spec import SweepSpec, load_sweep


def pattern_images(n_per_class: int, classes: int = 4, size: int = 20, seed: int = 0) -> ImageSet:
    """Learnable uint8 images: class c lights up quadrant c, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 90, (n_per_class * classes, 3, size, size), generator=gen).float()
    y = torch.arange(classes).repeat_interleave(n_per_class)
    h = size // 2
    for c in range(classes):
        r, col = divmod(c, 2)
        x[y == c, :, r * h : (r + 1) * h, col * h : (col + 1) * h] += 140
    perm = torch.randperm(len(y), generator=gen)
    return ImageSet(x.clamp(0, 255).to(torch.uint8)[perm], y[perm], [f"c{i}" for i in range(classes)])


@pytest.fixture
def tiny_splits() -> Splits:
    train, val, test = pattern_images(64, seed=0), pattern_images(16, seed=1), pattern_images(16, seed=2)
    return Splits(train, val, test, train.classes, (0.3, 0.3, 0.3), (0.3, 0.3, 0.3))


@pytest.fixture
def tiny_config(tmp_path: Path) -> TrainConfig:
    """A resolved config that trains document 004's net on 20 px tiny_splits in about a second."""
    cfg = apply_overrides(
        TrainConfig(),
        {
            "epochs": 4,
            "batch_size": 32,
            "data.image_size": 20,
            "optim.name": "adam",
            "optim.lr": 2e-3,
            "model.batchnorm": True,
            "precision": "fp32",
            "data.cache_dir": str(tmp_path / "cache"),
        },
    )
    return resolve_config(cfg)


def write_image(path: Path, mode: str, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour: object = {
        "RGB": (value, value // 2, 255 - value),
        "L": value,
        "RGBA": (value, value, 0, 128),
        "P": value,
        "I;16": value * 257,  # 16-bit grayscale: the same brightness as L's value
    }[mode]
    Image.new(mode, size, colour).save(path)  # type: ignore[arg-type]


def make_folder(
    root: Path,
    classes: int = 3,
    per_class: int = 6,
    split: str | None = "train",
    modes: tuple[str, ...] = ("RGB",),
    sizes: tuple[tuple[int, int], ...] = ((20, 20),),
) -> Path:
    """An image-folder tree ``root/<split>/c<k>/img<i>.png`` with the given modes and sizes."""
    base = root / split if split else root
    for c in range(classes):
        for i in range(per_class):
            mode, size = modes[i % len(modes)], sizes[i % len(sizes)]
            write_image(base / f"c{c}" / f"img{i}.png", mode, size, 40 + 60 * c)
    return root


@pytest.fixture
def cifar_dir() -> Path:
    """The real CIFAR-10 image folders (``$STUDYRUNNER_DATA_DIR``, else the project's ``.data/``);
    the test is skipped without them."""
    raw = os.environ.get("STUDYRUNNER_DATA_DIR", "")
    found = Path(raw) if raw else Path(__file__).parents[1] / ".data" / "cifar10-jpg"  # where `make data` unpacks it
    if not found.is_dir():
        pytest.skip("unpack CIFAR-10 (make data) or set STUDYRUNNER_DATA_DIR to run real-data tests")
    return found


def write_sweep(tmp_path: Path, body: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """A 4-class own-data folder (train/ + val/ + test/) of 20 px solid-colour images."""
    root = make_folder(tmp_path / "own", classes=4, per_class=32, split="train", sizes=((20, 20),))
    make_folder(root, classes=4, per_class=4, split="val", sizes=((20, 20),))
    return make_folder(root, classes=4, per_class=4, split="test", sizes=((20, 20),))


@pytest.fixture
def tiny_train(tiny_data: Path, tmp_path: Path) -> str:
    """The ``train:`` section of a sweep that trains on tiny_data in well under a second per epoch."""
    return (
        f"train:\n  data: {{dataset: folder, path: '{tiny_data}', image_size: 20, cache_dir: '{tmp_path / 'cache'}'}}\n"
        "  epochs: 3\n  batch_size: 16\n  precision: fp32\n  optim: {name: adam, lr: 0.003}\n"
    )


def sweep_spec(tmp_path: Path, tiny_train: str, head: str = "", space: str | None = None, name: str = "s") -> SweepSpec:
    """A sweep over tiny_data: study NAME, extra top-level HEAD lines, a SPACE (lr x batchnorm by default)."""
    space = space or ("space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n  model.batchnorm: {choices: [true, false]}\n")
    return load_sweep(write_sweep(tmp_path, f"study: {name}\n{head}{tiny_train}{space}", f"{name}.yaml"))


def history(accs: list[float], val_gap: float = 0.05) -> list[dict[str, float]]:
    """Per-epoch records with the given train accuracies and validation ``val_gap`` points below."""
    return [
        {
            "epoch": i + 1,
            "train_acc": a,
            "val_acc": a - val_gap,
            "train_loss": 1 - a,
            "val_loss": 1.1 - a,
            "lr": 0.001,
            "epoch_seconds": 1.0,
            "images_per_s": 100.0,
        }
        for i, a in enumerate(accs)
    ]


def step_result(name: str, values: list[float], gap: float = 0.05) -> StepResult:
    """A narrative step whose complete runs end at ``values`` train accuracy."""
    runs = [TrialResult(i, "COMPLETE", v, {"seed": i}, history([v - 0.1, v], gap), v - 0.01) for i, v in enumerate(values)]
    return StepResult(name, f"step {name}", "setup", "claim", {"train_acc": 0.9, "epochs": 50}, runs, {})


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server of our own on loopback for the whole session (tests.servers.Postgres)."""
    from tests.servers import Postgres

    server = Postgres()
    yield server
    server.close()


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the session's PostgreSQL server."""
    return pg_server.database()

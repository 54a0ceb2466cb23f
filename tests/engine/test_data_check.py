"""Own photos as they come: unreadable images reported together (or left out with data.skip_bad),
warnings as notes, and check_data, which refuses unusable folders from their listing alone."""

import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from studyrunner.config import DataConfig
from studyrunner.engine import decode as decode_mod
from studyrunner.engine.data import check_data, check_objective_split, load_splits
from studyrunner.engine.decode import DataError
from studyrunner.engine.fit import fit
from tests.conftest import make_folder, write_image

LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a21\nsize 18832\n"


def _cfg(root, tmp_path, **kw) -> DataConfig:
    return DataConfig(**{"dataset": "folder", "path": str(root), "image_size": 8, "cache_dir": str(tmp_path / "cache"), **kw})


@pytest.fixture
def no_decoding(monkeypatch):
    """Any decode (studyrunner's or PIL's) fails the test: check_data must list files only."""
    monkeypatch.setattr(decode_mod, "_decode", lambda *a, **k: pytest.fail("check_data decoded an image"))
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("check_data opened an image with PIL"))


def test_all_unreadable_images_are_reported_together_with_the_count(tmp_path):
    root = make_folder(tmp_path / "d", classes=2, per_class=5, split="train", sizes=((12, 12),))
    make_folder(root, classes=2, per_class=2, split="val", sizes=((12, 12),))
    (root / "train" / "c0" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "train" / "c1" / "empty.jpg").write_bytes(b"")
    (root / "val" / "c1" / "pointer.jpg").write_bytes(LFS)
    with pytest.raises(DataError) as err:
        load_splits(_cfg(root, tmp_path))
    message = str(err.value)
    assert message.startswith(f"cannot read images (3 of 17 under {root}): ")
    assert "train/c0/broken.png: not an image format PIL can read" in message
    assert "train/c1/empty.jpg: empty file (0 bytes)" in message
    assert "val/c1/pointer.jpg: Git LFS pointer, not an image: fetch the real files with git lfs pull" in message
    assert "data.skip_bad=true" in message and "Traceback" not in message


def test_skip_bad_loads_and_trains_without_them(tmp_path, tiny_config):
    root = make_folder(tmp_path / "d", classes=2, per_class=8, split="train", sizes=((20, 20),))
    make_folder(root, classes=2, per_class=2, split="val", sizes=((20, 20),))
    for i in range(7):  # more than the message names: it says how many more
        (root / "train" / f"c{i % 2}" / f"bad{i}.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read images \(7 of 27 .*; and 2 more\."):
        load_splits(_cfg(root, tmp_path, image_size=20))
    s = load_splits(_cfg(root, tmp_path, image_size=20, skip_bad=True))
    assert len(s.train) == 16 and len(s.val) == 4 and torch.bincount(s.train.labels).tolist() == [8, 8]
    (note,) = [n for n in s.notes if n.startswith("data.skip_bad")]
    assert note.startswith("data.skip_bad: left out 7 unreadable images of 27: train/c0/bad0.jpg") and "and 2 more" in note
    cfg = replace(tiny_config, epochs=1, data=replace(tiny_config.data, path=str(root), dataset="folder", skip_bad=True))
    result = fit(cfg, s)
    assert result.outcome == "completed" and len(result.history) == 1 and result.classes == ["c0", "c1"]


def test_a_git_lfs_pointer_is_named_as_such(tmp_path):
    root = make_folder(tmp_path / "d", classes=2, per_class=3, split=None, sizes=((12, 12),))
    (root / "c1" / "photo.jpg").write_bytes(LFS)
    with pytest.raises(DataError, match=r"cannot read image \(1 of 7 .*\): c1/photo.jpg: Git LFS pointer, not an image"):
        load_splits(_cfg(root, tmp_path, val_fraction=0.0))


def test_nested_images_and_a_one_image_class_are_warned(tmp_path):
    root = make_folder(tmp_path / "d", classes=2, per_class=10, split=None, sizes=((12, 12),))
    write_image(root / "c0" / "old" / "a.png", "RGB", (12, 12), 40)
    write_image(root / "c0" / "old" / "b.png", "RGB", (12, 12), 40)
    write_image(root / "tiny" / "only.png", "RGB", (12, 12), 250)
    s = load_splits(_cfg(root, tmp_path, val_fraction=0.2))
    assert s.classes == ["c0", "c1", "tiny"] and len(s.train) + len(s.val) == 23
    assert f"{root}: 2 images in sub-folders of class folders (c0: 2, e.g. c0/old/a.png): used, as that class" in s.notes
    assert (
        "data: class tiny (1 image in all) has no validation image: its validation accuracy is not measured; "
        "add images to it or drop it with data.classes"
    ) in s.notes
    plan = check_data(_cfg(root, tmp_path, val_fraction=0.2))
    assert plan.counts["val"][2] == 0 and any("class tiny" in n for n in plan.notes)


def test_check_data_accepts_a_good_folder_without_decoding(tmp_path, no_decoding):
    root = make_folder(tmp_path / "d", classes=3, per_class=6, split="train", sizes=((12, 12),))
    make_folder(root, classes=3, per_class=2, split="test", sizes=((12, 12),))
    plan = check_data(_cfg(root, tmp_path, val_fraction=1 / 6))
    assert plan.root == root and plan.classes == ["c0", "c1", "c2"] and not plan.notes
    assert plan.counts == {"train": [5, 5, 5], "val": [1, 1, 1], "test": [2, 2, 2]}
    assert plan.layout == "class folders in train/ + test/; val = 0.167 of train, stratified"
    assert plan.describe() == f"data {root} ({plan.layout}): 3 classes (c0, c1, c2)  train 15  val 3  test 6"


def test_check_data_refuses_a_flat_folder_and_suggests_prefix_labels(tmp_path, no_decoding):
    flat = tmp_path / "flat"
    for name in ("fist_0001.jpg", "fist_0002.jpg", "palm-1.jpg", "palm-2.jpg"):
        write_image(flat / name, "RGB", (12, 12), 9)
    with pytest.raises(DataError, match=r"holds 4 images but no class folders.*set data.labels: prefix"):
        check_data(_cfg(flat, tmp_path))
    assert check_data(_cfg(flat, tmp_path, labels="prefix", val_fraction=0.5)).counts == {"train": [1, 1], "val": [1, 1]}
    other = tmp_path / "other"
    for name in ("a.jpg", "b.jpg"):
        write_image(other / name, "RGB", (12, 12), 9)
    with pytest.raises(DataError, match=r"holds 2 images but no class folders.*one folder per class.*data.labels: FILE.csv"):
        check_data(_cfg(other, tmp_path))


def test_check_data_refuses_a_parent_of_one_class_an_empty_folder_and_an_empty_class(tmp_path, no_decoding):
    parent = make_folder(tmp_path / "p" / "dataset", classes=3, per_class=2, split=None).parent
    with pytest.raises(DataError, match=r"has one class folder \(dataset\), which holds folders \(c0, c1, c2\); .* point "
                                        r"data.path at .*p/dataset: a classifier needs at least two classes"):  # fmt: skip
        check_data(_cfg(parent, tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty is empty; expected"):
        check_data(_cfg(tmp_path / "empty", tmp_path))
    root = make_folder(tmp_path / "d", classes=2, per_class=2, split=None)
    (root / "c2").mkdir()
    with pytest.raises(DataError, match=r"class folder .*c2 holds no images"):
        check_data(_cfg(root, tmp_path))


def test_check_data_refuses_splits_too_small_to_train(tmp_path, no_decoding):
    root = make_folder(tmp_path / "d", classes=2, per_class=4, split=None)
    (root / "labels.csv").write_text("c0/img0.png,c0\nc0/img1.png,c0\n")
    with pytest.raises(DataError, match=r"labels.csv: every training image found is labelled 'c0'.*at least two classes"):
        check_data(_cfg(root, tmp_path, labels="labels.csv"))
    (root / "labels.csv").write_text("gone/x.png,a\ngone/y.png,b\n")
    with pytest.raises(
        DataError, match=r"no training images \(data.skip_bad: left out labels.csv: no file found for 2 of 2 rows"
    ):
        check_data(_cfg(root, tmp_path, labels="labels.csv", skip_bad=True))
    with pytest.raises(DataError, match=r"rounds to 0 validation images"):
        check_data(_cfg(root, tmp_path, val_fraction=0.05))


def test_check_data_names_lfs_pointers_from_their_first_bytes(tmp_path, no_decoding):
    root = make_folder(tmp_path / "d", classes=2, per_class=3, split=None)
    for i in range(3):
        (root / "c0" / f"img{i}.png").write_bytes(LFS)
    with pytest.raises(DataError, match=r"cannot read images \(3 of 6 .*c0/img0.png: Git LFS pointer.* 3 of them are Git LFS"):
        check_data(_cfg(root, tmp_path, val_fraction=0.0))
    plan = check_data(_cfg(root, tmp_path, val_fraction=0.0, skip_bad=True))
    assert any(n.startswith("data.skip_bad: left out 3 unreadable images of 6") for n in plan.notes)


def test_check_data_on_cifar10_batches_and_image_folders(tmp_path, no_decoding):
    folder = tmp_path / "batches" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        blob = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(blob))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b", "c", "d"]}))
    plan = check_data(DataConfig(path=str(tmp_path / "batches"), val_fraction=0.2, cache_dir=str(tmp_path / "c")))
    assert plan.classes == ["a", "b", "c", "d"] and plan.counts == {"train": [4] * 4, "val": [1] * 4, "test": [1] * 4}
    assert not (tmp_path / "c").exists()  # nothing decoded, nothing cached
    jpg = make_folder(tmp_path / "jpg", classes=2, per_class=5, split="train")
    make_folder(jpg, classes=2, per_class=1, split="test")
    plan = check_data(DataConfig(path=str(jpg), val_fraction=0.2))
    assert plan.counts == {"train": [4, 4], "val": [1, 1], "test": [1, 1]} and plan.layout.startswith("CIFAR-10 image folders")


def test_a_test_objective_with_a_test_csv(tmp_path):
    root = make_folder(tmp_path / "d", classes=2, per_class=2, split=None)
    (root / "a.csv").write_text("c0/img0.png,c0\nc1/img0.png,c1\n")
    with pytest.raises(DataError, match="has no test split"):
        check_objective_split("test_acc", _cfg(root, tmp_path, labels="a.csv"), None)
    check_objective_split("test_acc", _cfg(root, tmp_path, labels="train=a.csv,test=a.csv"), None)

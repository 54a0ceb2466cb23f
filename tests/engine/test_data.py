import os
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from studyrunner.config import DataConfig, TrainConfig, apply_overrides
from studyrunner.engine import data as data_mod
from studyrunner.engine import decode as decode_mod
from studyrunner.engine.data import (
    channel_stats,
    load_splits,
    read_folder,
    stratified_indices,
    stratified_split,
)
from studyrunner.engine.decode import DataError
from tests.conftest import make_folder, write_image


def test_stratified_subset_keeps_class_shares_and_is_seeded():
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    idx = stratified_indices(labels, 100, seed=3)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    assert torch.bincount(labels[idx]).tolist() == [60, 30, 10]
    assert torch.equal(idx, stratified_indices(labels, 100, seed=3))
    assert not torch.equal(idx, stratified_indices(labels, 100, seed=4))
    assert idx.tolist() != list(range(100))  # never the first N


def test_stratified_subset_total_is_exact_with_remainders():
    labels = torch.tensor([0] * 7 + [1] * 7 + [2] * 7)
    assert len(stratified_indices(labels, 10, seed=0)) == 10


def test_stratified_split_is_disjoint_and_per_class():
    labels = torch.arange(10).repeat(50)
    keep, held = stratified_split(labels, 0.2, seed=0)
    assert len(keep) + len(held) == 500 and not set(keep.tolist()) & set(held.tolist())
    assert torch.bincount(labels[held]).tolist() == [10] * 10


def test_folder_of_mixed_modes_and_sizes(tmp_path):
    root = make_folder(
        tmp_path / "d", classes=2, per_class=8, modes=("RGB", "L", "RGBA", "P"), sizes=((20, 20), (37, 23), (16, 50))
    )
    cfg = DataConfig(image_size=16, cache_dir=str(tmp_path / "cache"))
    s = read_folder(root / "train", cfg)
    assert s.images.shape == (16, 3, 16, 16) and s.images.dtype == torch.uint8
    assert s.classes == ["c0", "c1"] and s.labels.tolist() == [0] * 8 + [1] * 8
    gray = s.images[1]  # mode L: all three channels equal
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_cache_is_reused_then_invalidated_when_source_changes(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", classes=2, per_class=3)
    cfg = DataConfig(image_size=16, cache_dir=str(tmp_path / "cache"))
    first = read_folder(root / "train", cfg)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1

    def no_decode(*a, **k):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(decode_mod, "_decode", no_decode)
    again = read_folder(root / "train", cfg)
    assert torch.equal(first.images, again.images)

    monkeypatch.undo()
    write_image(root / "train" / "c0" / "new.png", "RGB", (20, 20), 7)
    changed = read_folder(root / "train", cfg)
    assert len(changed) == 7

    target = root / "train" / "c1" / "img0.png"
    write_image(target, "RGB", (20, 20), 250)
    os.utime(target, ns=(1, 1))  # new content, new mtime
    assert not torch.equal(read_folder(root / "train", cfg).images, changed.images)


def test_own_data_train_val_folders(tmp_path):
    root = make_folder(tmp_path / "d", classes=3, per_class=4, split="train")
    make_folder(root, classes=3, per_class=2, split="val")
    s = load_splits(DataConfig(dataset="folder", path=str(root), image_size=16, cache_dir=str(tmp_path / "c")))
    assert len(s.train) == 12 and s.val is not None and len(s.val) == 6 and s.test is None


def test_own_data_single_folder_is_split_stratified(tmp_path):
    root = make_folder(tmp_path / "d", classes=3, per_class=10, split=None)
    cfg = DataConfig(dataset="folder", path=str(root), image_size=16, val_fraction=0.2, cache_dir=str(tmp_path / "c"))
    s = load_splits(cfg)
    assert len(s.train) == 24 and s.val is not None and torch.bincount(s.val.labels).tolist() == [2, 2, 2]


def test_cifar_image_folder_layout_with_subset(tmp_path):
    root = make_folder(tmp_path / "cifar", classes=4, per_class=10, split="train", sizes=((32, 32),))
    make_folder(root, classes=4, per_class=3, split="test", sizes=((32, 32),))
    cfg = DataConfig(
        path=str(tmp_path / "cifar"), image_size=32, train_subset=20, val_fraction=0.25, cache_dir=str(tmp_path / "c")
    )
    s = load_splits(cfg)
    assert len(s.val) == 10 and len(s.train) == 20 and len(s.test) == 12
    assert torch.bincount(s.train.labels).tolist() == [5, 5, 5, 5]
    assert not set(s.val.images[:, 0, 0, 0].tolist()) - {40, 100, 160, 220}


def test_torchvision_cifar_batches_are_read(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        blob = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(blob))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b", "c", "d"]}))
    s = load_splits(DataConfig(path=str(tmp_path), image_size=32, val_fraction=0.0, cache_dir=str(tmp_path / "c")))
    assert len(s.train) == 20 and len(s.test) == 4 and s.classes == ["a", "b", "c", "d"]


def test_channel_stats_match_direct_computation():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    mean, std = channel_stats(x)
    f = x.double() / 255
    assert np.allclose(mean, f.mean(dim=(0, 2, 3)).tolist(), atol=1e-6)
    assert np.allclose(std, f.std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-6)


def test_missing_directory_names_it(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="nope.* does not exist"):
        load_splits(DataConfig(path=str(tmp_path / "nope")))
    monkeypatch.delenv("STUDYRUNNER_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # outside any project with a .data/ folder
    with pytest.raises(DataError, match="no data directory.*--data-dir"):
        load_splits(DataConfig())


def test_cifar_missing_offline_says_where_to_put_it(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_splits(DataConfig(path=str(tmp_path), image_size=32))


def test_empty_class_folder_and_unreadable_image_are_named(tmp_path):
    root = make_folder(tmp_path / "d", classes=2, per_class=5, split=None)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty holds no images"):
        load_splits(DataConfig(dataset="folder", path=str(root), image_size=32, cache_dir=str(tmp_path / "c")))
    (root / "empty" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot read image \(1 of 11 under .*\): empty/broken.jpg: not an image format PIL"):
        load_splits(DataConfig(dataset="folder", path=str(root), image_size=32, cache_dir=str(tmp_path / "c")))


def test_val_folder_with_other_classes_is_refused(tmp_path):
    root = make_folder(tmp_path / "d", classes=3, per_class=2, split="train")
    make_folder(root, classes=2, per_class=2, split="val")
    with pytest.raises(DataError, match="has classes"):
        load_splits(DataConfig(dataset="folder", path=str(root), image_size=32, cache_dir=str(tmp_path / "c")))


def test_sixteen_bit_grayscale_is_scaled_and_exif_orientation_applied(tmp_path):
    from PIL import Image

    from studyrunner.engine.decode import _decode

    Image.new("I;16", (8, 8), 30000).save(tmp_path / "deep.png")  # 30000 of 65535 = 117 of 255, not clipped to 255
    assert _decode(tmp_path / "deep.png", 8).float().mean().item() == pytest.approx(117, abs=1)
    half = Image.new("L", (16, 16), 0)
    half.paste(255, (8, 0, 16, 16))  # stored: dark left half, bright right half
    exif = half.getexif()
    exif[0x0112] = 6  # orientation: shown rotated 90 degrees clockwise, so the bright half is at the bottom
    half.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    img = _decode(tmp_path / "turned.jpg", 16)[0].float()
    assert img[:8].mean() < 60 and img[8:].mean() > 190


def test_class_selection_and_validation_from_the_test_folder(tmp_path):
    root = make_folder(tmp_path / "d", classes=4, per_class=6, split="train", sizes=((32, 32),))
    make_folder(root, classes=4, per_class=3, split="test", sizes=((32, 32),))
    cfg = apply_overrides(
        TrainConfig(),
        {"data.path": str(root), "data.classes": ["c1", "c3"], "data.val_from": "test", "data.cache_dir": str(tmp_path / "c")},
    ).data
    cfg = replace(cfg, image_size=32)
    s = load_splits(cfg)
    assert s.classes == ["c1", "c3"] and len(s.train) == 12 and len(s.val) == 6 and s.test is None
    assert sorted(s.train.labels.unique().tolist()) == [0, 1]
    with pytest.raises(DataError, match=r"\['c9'\] not found"):
        load_splits(
            apply_overrides(
                TrainConfig(),
                {
                    "data.path": str(root),
                    "data.classes": ["c1", "c9"],
                    "data.cache_dir": str(tmp_path / "c"),
                    "data.image_size": 32,
                },
            ).data
        )


def test_only_the_chosen_images_are_decoded(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", classes=4, per_class=20, split="train", sizes=((16, 16),))
    decoded = []
    real = decode_mod._decode
    monkeypatch.setattr(decode_mod, "_decode", lambda p, *a: decoded.append(p) or real(p, *a))
    cfg = DataConfig(
        dataset="folder", path=str(root), image_size=16, classes=("c1", "c3"), train_subset=10, val_fraction=0.2,
        cache_dir=str(tmp_path / "c"),
    )  # fmt: skip
    s = load_splits(cfg)
    assert len(s.train) == 10 and len(s.val) == 8 and len(decoded) == 18  # not the 80 files of the folder
    assert {p.parent.name for p in decoded} == {"c1", "c3"} and s.classes == ["c1", "c3"]
    assert torch.bincount(s.train.labels).tolist() == [5, 5] and torch.bincount(s.val.labels).tolist() == [4, 4]


def test_images_that_would_not_fit_in_memory_are_refused_before_decoding(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", classes=2, per_class=10, split="train", sizes=((16, 16),))
    monkeypatch.setattr(data_mod, "available_memory", lambda: 100 * 3 * 224 * 224)  # room for 80 images at 224 px
    monkeypatch.setattr(decode_mod, "_decode", lambda *a: pytest.fail("decoded although it cannot fit"))
    cfg = DataConfig(dataset="folder", path=str(root), image_size=224, val_fraction=0.0, cache_dir=str(tmp_path / "c"))
    monkeypatch.setattr(data_mod, "HOST_SHARE", 0.05)  # 20 images need more than 5 of the 100 images' worth
    with pytest.raises(DataError, match=r"20 images at 224 px need .* GiB decoded.*about 5 images fit at 224 px"):
        load_splits(cfg)


def test_shorter_side_is_resized_then_centre_cropped(tmp_path):
    from PIL import Image

    im = Image.new("RGB", (40, 40), (255, 0, 0))
    im.paste((0, 0, 255), (10, 10, 30, 30))  # a blue square inside a red frame 10 px wide
    im.save(tmp_path / "framed.png")
    whole = decode_mod._decode(tmp_path / "framed.png", 20)  # resized to 20: the frame stays
    cropped = decode_mod._decode(tmp_path / "framed.png", 20, 40)  # resize 40, crop the middle 20: only blue
    assert whole[0, 0, 0] > 200 and cropped[0].max() < 30 and cropped[2].min() > 225


def test_validation_and_test_subsets_are_stratified_and_seeded(tmp_path):
    root = make_folder(tmp_path / "d", classes=3, per_class=10, split="train", sizes=((8, 8),))
    make_folder(root, classes=3, per_class=10, split="test", sizes=((8, 8),))
    cfg = DataConfig(path=str(root), image_size=8, val_fraction=0.5, val_subset=6, test_subset=9, cache_dir=str(tmp_path / "c"))
    s = load_splits(cfg)
    assert (
        len(s.train) == 15
        and torch.bincount(s.val.labels).tolist() == [2, 2, 2]
        and torch.bincount(s.test.labels).tolist() == [3] * 3
    )
    assert torch.equal(load_splits(cfg).val.images, s.val.images)


def test_the_projects_data_folder_is_found_without_any_variable(tmp_path, monkeypatch):
    """After `make`, commands run anywhere inside the project find .data/cifar10-jpg and .data/cache."""
    from studyrunner.engine.data import resolve_root
    from studyrunner.engine.decode import cache_root

    (tmp_path / ".data" / "cifar10-jpg").mkdir(parents=True)
    (tmp_path / ".data" / "cache").mkdir()
    (tmp_path / "sweeps").mkdir()
    monkeypatch.delenv("STUDYRUNNER_DATA_DIR", raising=False)
    monkeypatch.delenv("STUDYRUNNER_CACHE_DIR", raising=False)
    monkeypatch.chdir(tmp_path / "sweeps")
    assert resolve_root(DataConfig()) == (tmp_path / ".data" / "cifar10-jpg").resolve()
    assert cache_root(DataConfig()) == (tmp_path / ".data" / "cache").resolve()

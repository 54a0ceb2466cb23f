"""data.labels: classes from file-name prefixes or CSV files (tiny generated folders), and what the
listing of own images ignores (AppleDouble files, __MACOSX/) or accepts (.jfif)."""

import pytest
import torch
from PIL import Image

from studyrunner.config import ConfigError, DataConfig, TrainConfig, apply_overrides
from studyrunner.engine import decode as decode_mod
from studyrunner.engine.data import load_splits
from studyrunner.engine.decode import DataError
from studyrunner.engine.labels import list_folder, prefix_of
from tests.conftest import make_folder, write_image

COLOURS = {"fist": 40, "okay": 120, "palm": 200}  # red channel of each class's images


def _cfg(root, tmp_path, **kw) -> DataConfig:
    return DataConfig(**{"dataset": "folder", "path": str(root), "image_size": 8, "cache_dir": str(tmp_path / "cache"), **kw})


def _prefixed(folder, per_class=4):
    """fist_0001.jpg, okay7.jpg and palm-12.png style names, each class its own colour."""
    for i in range(per_class):
        write_image(folder / f"fist_{i:04d}.png", "RGB", (12, 12), COLOURS["fist"])
        write_image(folder / f"okay{i}.png", "RGB", (12, 12), COLOURS["okay"])
        write_image(folder / f"palm-{i + 10}.png", "RGB", (12, 12), COLOURS["palm"])
    return folder


def _red_by_class(split):
    return {split.classes[int(y)]: int(img[0, 0, 0]) for img, y in zip(split.images, split.labels, strict=True)}


def test_prefix_of_takes_the_leading_letters():
    assert [prefix_of(n) for n in ("fist_0001.jpg", "palm-12.png", "okay7.jpg", "thumb.jpg", "0001.jpg")] == [
        "fist", "palm", "okay", "thumb", "",
    ]  # fmt: skip


def test_prefix_labels_a_flat_folder_by_name(tmp_path):
    root = _prefixed(tmp_path / "flat")
    s = load_splits(_cfg(root, tmp_path, labels="prefix", val_fraction=0.25))
    assert s.classes == ["fist", "okay", "palm"]
    assert torch.bincount(s.train.labels).tolist() == [3, 3, 3] and torch.bincount(s.val.labels).tolist() == [1, 1, 1]
    assert _red_by_class(s.train) == COLOURS and _red_by_class(s.val) == COLOURS  # every image under its name's class


def test_prefix_train_and_val_folders_share_the_training_classes(tmp_path):
    root = tmp_path / "split"
    _prefixed(root / "train")
    write_image(root / "val" / "palm_1.png", "RGB", (12, 12), COLOURS["palm"])
    write_image(root / "val" / "fist_1.png", "RGB", (12, 12), COLOURS["fist"])
    s = load_splits(_cfg(root, tmp_path, labels="prefix"))
    assert s.classes == ["fist", "okay", "palm"] and s.val.labels.tolist() == [0, 2]
    assert any("class okay (4 images in all) has no validation image" in n for n in s.notes), s.notes


def test_a_name_without_leading_letters_is_named(tmp_path):
    root = _prefixed(tmp_path / "flat")
    write_image(root / "0042.png", "RGB", (12, 12), 0)
    with pytest.raises(DataError, match=r"data.labels=prefix: 1 file name under .* do not start with letters.*0042.png"):
        load_splits(_cfg(root, tmp_path, labels="prefix"))


def _photos(root, n=3):
    """photos/img<i>.png: names that say nothing of the class, so the labels must come from the CSV."""
    for i in range(2 * n):
        write_image(root / "photos" / f"img{i}.png", "RGB", (12, 12), 40 if i < n else 200)
    return root


@pytest.mark.parametrize("header", ["path,label\n", "", "filename;class\n"])
def test_csv_labels_with_or_without_a_header(tmp_path, header):
    root = _photos(tmp_path / "d")
    sep = ";" if ";" in header else ","
    rows = "".join(f"photos/img{i}.png{sep}{'dark' if i < 3 else 'light'}\n" for i in range(6))
    (root / "labels.csv").write_text(header + rows)
    s = load_splits(_cfg(root, tmp_path, labels="labels.csv", val_fraction=0.0))
    assert s.classes == ["dark", "light"] and s.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and s.val is None
    assert _red_by_class(s.train) == {"dark": 40, "light": 200}


def test_csv_written_on_windows_is_matched_by_file_name(tmp_path):
    root = _photos(tmp_path / "d")
    rows = "".join(f"C:\\Users\\me\\data\\imgs\\img{i}.png,{'dark' if i < 3 else 'light'}\r\n" for i in range(6))
    (root / "labels.csv").write_text("image,label\r\n" + rows)
    s = load_splits(_cfg(root, tmp_path, labels="labels.csv", val_fraction=0.0))
    assert len(s.train) == 6 and _red_by_class(s.train) == {"dark": 40, "light": 200}


def test_missing_csv_rows_are_named_in_one_message_or_skipped(tmp_path):
    root = _photos(tmp_path / "d")
    rows = [f"photos/img{i}.png,{'dark' if i < 3 else 'light'}" for i in range(6)]
    rows += ["photos/gone1.png,dark", "photos/gone2.png,light", "elsewhere/gone3.png,dark"]
    (root / "labels.csv").write_text("\n".join(rows))
    with pytest.raises(DataError) as err:
        load_splits(_cfg(root, tmp_path, labels="labels.csv", val_fraction=0.0))
    message = str(err.value)
    assert "labels.csv: no file found for 3 of 9 rows" in message and "data.skip_bad=true" in message
    assert all(name in message for name in ("gone1.png", "gone2.png", "gone3.png"))
    s = load_splits(_cfg(root, tmp_path, labels="labels.csv", val_fraction=0.0, skip_bad=True))
    (note,) = [n for n in s.notes if n.startswith("data.skip_bad: left out labels.csv: no file found for 3 of 9 rows")]
    assert len(s.train) == 6 and note.endswith(": photos/gone1.png, photos/gone2.png, elsewhere/gone3.png")


def test_one_csv_per_split_and_a_label_train_has_not(tmp_path):
    root = _photos(tmp_path / "d", n=4)
    label = lambda i: "dark" if i < 4 else "light"  # noqa: E731
    (root / "tr.csv").write_text("".join(f"photos/img{i}.png,{label(i)}\n" for i in (0, 1, 2, 4, 5, 6)))
    (root / "va.csv").write_text("photos/img3.png,dark\nphotos/img7.png,light\n")
    (root / "te.csv").write_text("photos/img0.png,dark\n")  # also a training image: said, not refused
    s = load_splits(_cfg(root, tmp_path, labels="train=tr.csv, val=va.csv, test=te.csv"))
    assert (len(s.train), len(s.val), len(s.test)) == (6, 2, 1) and s.val.labels.tolist() == [0, 1]
    assert [n for n in s.notes if "in both" in n] == [
        "1 image in both the train and the test CSV (e.g. photos/img0.png); the test accuracy is not measured on held-out images"
    ]
    (root / "va.csv").write_text("photos/img3.png,dark\nphotos/img7.png,grey\n")
    with pytest.raises(DataError, match=r"va.csv: labels grey are not among the train CSV's labels \(dark, light\)"):
        load_splits(_cfg(root, tmp_path, labels="train=tr.csv,val=va.csv"))


def test_a_relabelled_csv_reuses_the_decoded_images_with_its_new_labels(tmp_path, monkeypatch):
    root = _photos(tmp_path / "d")
    (root / "labels.csv").write_text("".join(f"photos/img{i}.png,{'a' if i < 3 else 'b'}\n" for i in range(6)))
    first = load_splits(_cfg(root, tmp_path, labels="labels.csv", val_fraction=0.0))
    (root / "labels.csv").write_text("".join(f"photos/img{i}.png,{'a' if i % 2 else 'b'}\n" for i in range(6)))
    monkeypatch.setattr(decode_mod, "_decode", lambda *a: pytest.fail("decoded again although the files are unchanged"))
    again = load_splits(_cfg(root, tmp_path, labels="labels.csv", val_fraction=0.0))
    assert torch.equal(again.train.images, first.train.images) and again.train.labels.tolist() == [1, 0, 1, 0, 1, 0]


def test_data_labels_values_are_checked_by_the_config():
    base = {"data.dataset": "folder"}
    for good in ("", "prefix", "my labels.csv", "train=a.csv,val=b.csv", "val=b.csv, train=a.csv"):
        assert apply_overrides(TrainConfig(), {**base, "data.labels": good}).data.labels == good
    for bad in ("labels.txt", "val=b.csv", "train=a.csv,dev=b.csv", "prefixes"):
        with pytest.raises(ConfigError, match="data.labels must be") as err:
            apply_overrides(TrainConfig(), {**base, "data.labels": bad})
        assert err.value.key == "data.labels"
    with pytest.raises(ConfigError, match="data.labels needs data.dataset=folder"):
        apply_overrides(TrainConfig(), {"data.labels": "prefix"})
    assert apply_overrides(TrainConfig(), {"data.skip_bad": "true"}).data.skip_bad is True


def test_appledouble_files_and_macosx_folders_are_ignored_and_jfif_is_read(tmp_path):
    root = make_folder(tmp_path / "zip", classes=2, per_class=2, split=None, sizes=((12, 12),))
    (root / "c0" / "._x.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble resource fork")
    (root / "__MACOSX" / "c0").mkdir(parents=True)
    (root / "__MACOSX" / "c0" / "._img1.png").write_bytes(b"\x00\x05\x16\x07")
    Image.new("RGB", (12, 12), (90, 90, 90)).save(root / "c1" / "phone.jfif", format="JPEG")
    listed = list_folder(root)
    assert listed.classes == ["c0", "c1"]
    assert sorted(p.name for p in listed.files) == ["img0.png", "img0.png", "img1.png", "img1.png", "phone.jfif"]
    s = load_splits(_cfg(root, tmp_path, val_fraction=0.0))
    assert len(s.train) == 5 and not s.notes


def test_split_folders_as_datasets_name_them_and_nested_varieties(tmp_path):
    """Fruits-360 style: Training/ and Test/ (capitalised), each class folder holding variety sub-folders."""
    root = tmp_path / "fruits"
    for split, n in (("Training", 4), ("Test", 2)):
        for fruit, value in (("Apple", 40), ("Cherry", 200)):
            for i in range(n):
                write_image(root / split / fruit / f"{fruit} Red {split}" / f"r0_{i}_100.jpg", "RGB", (12, 12), value)
    s = load_splits(_cfg(root, tmp_path, val_fraction=0.25))
    assert s.classes == ["Apple", "Cherry"] and (len(s.train), len(s.val), len(s.test)) == (6, 2, 4)
    examples = "Apple: 4, e.g. Apple/Apple Red Training/r0_0_100.jpg; Cherry: 4, e.g. Cherry/Cherry Red Training/r0_0_100.jpg"
    assert f"{root / 'Training'}: 8 images in sub-folders of class folders ({examples}): used, as that class" in s.notes


def test_a_name_found_twice_is_told_apart_by_its_folders_or_named(tmp_path):
    root = tmp_path / "d"
    for split in ("a", "b"):
        for c, value in (("x", 40), ("y", 200)):
            write_image(root / split / c / "same.png", "RGB", (12, 12), value + (split == "b") * 10)
    (root / "labels.csv").write_text("D:\\old\\a\\x\\same.png,x\nD:\\old\\a\\y\\same.png,y\n")  # a/x and a/y, by their folders
    s = load_splits(_cfg(root, tmp_path, labels="labels.csv", val_fraction=0.0))
    assert _red_by_class(s.train) == {"x": 40, "y": 200}
    (root / "labels.csv").write_text("same.png,x\nb/y/same.png,y\n")
    with pytest.raises(DataError, match=r"same.png \(found several times by name: "):
        load_splits(_cfg(root, tmp_path, labels="labels.csv", val_fraction=0.0))


def test_photos_beside_class_folders_and_heic_photos_are_noted(tmp_path):
    root = make_folder(tmp_path / "d", classes=2, per_class=2, split=None, sizes=((12, 12),))
    write_image(root / "stray.png", "RGB", (12, 12), 1)
    (root / "c0" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    s = load_splits(_cfg(root, tmp_path, val_fraction=0.0))
    assert len(s.train) == 4
    assert f"{root}: 1 image beside the class folders, in no class (stray.png): ignored" in s.notes
    assert f"{root}: 1 .heic/.heif photo ignored (PIL cannot read them); convert them to JPEG to use them" in s.notes

"""atomic_write: the whole new file or the old one, never half; the folder is created; a failed
write leaves the old file and no temporary beside it. And the optional-import helper."""

from pathlib import Path

import pytest

from studyrunner.extras import MissingExtra, available, require
from studyrunner.files import atomic_write


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path):
    target = tmp_path / "deep" / "history.json"
    atomic_write(target, lambda tmp: tmp.write_text("one"))
    atomic_write(target, lambda tmp: tmp.write_text("two"))
    assert target.read_text() == "two" and [p.name for p in target.parent.iterdir()] == ["history.json"]


def test_a_write_that_fails_keeps_the_old_file(tmp_path: Path):
    target = tmp_path / "table.json"
    target.write_text("old")

    def half(tmp: Path) -> None:
        tmp.write_text("ha")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["table.json"]


def test_require_names_the_extra_and_the_package(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # makes the import fail
    expected = r'EfficientNet needs the package timm, in studyrunner\'s \'pretrained\' extra: pip install -e "\.\[pretrained\]"'
    with pytest.raises(MissingExtra, match=expected):
        require("timm", "pretrained", "EfficientNet")
    assert require("json", "none", "x").dumps([1]) == "[1]"
    assert available("json") and not available("no_such_module_here")

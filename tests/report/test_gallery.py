import pytest
import torch

from studyrunner.config import TrainConfig, apply_overrides
from studyrunner.engine.data import load_splits
from studyrunner.engine.fit import fit
from studyrunner.engine.resolve import resolve_config
from tests.conftest import make_folder


def _checkpoint_on_a_folder(tmp_path, classes: int, per_class: int, **overrides) -> None:
    """One epoch on a 20 px own-data folder (train + val), checkpoints in tmp_path/ck."""
    root = make_folder(tmp_path / "own", classes=classes, per_class=per_class, split="train", sizes=((20, 20),))
    make_folder(root, classes=classes, per_class=per_class // 2, split="val", sizes=((20, 20),))
    own = {"data.dataset": "folder", "data.path": str(root), "data.image_size": 20, "data.cache_dir": str(tmp_path / "c")}
    cfg = apply_overrides(TrainConfig(), {**own, "epochs": 1, "precision": "fp32", "out_dir": str(tmp_path / "ck"), **overrides})
    cfg = resolve_config(cfg)
    fit(cfg, load_splits(cfg.data))


def test_prediction_grid_from_a_checkpoint(tmp_path):
    from studyrunner.report.gallery import prediction_grid

    _checkpoint_on_a_folder(tmp_path, classes=3, per_class=8)
    png = prediction_grid(tmp_path / "ck" / "best.pt", tmp_path / "grid.png", n=12)
    assert png.stat().st_size > 5000


def test_prediction_grid_names_an_unreadable_checkpoint(tmp_path):
    from studyrunner.errors import StudyrunnerError
    from studyrunner.report.gallery import prediction_grid

    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(StudyrunnerError, match="best.pt: not a readable studyrunner checkpoint"):
        prediction_grid(tmp_path / "best.pt", tmp_path / "grid.png")


def test_prediction_grid_from_a_checkpoint_saved_before_normalisation_was_recorded(tmp_path):
    """Older checkpoints have no ``normalisation``: a resnet with init=imagenet was built with the
    small-image stem then, and the grid must rebuild that, not the ImageNet stem."""
    from studyrunner.report.gallery import prediction_grid

    _checkpoint_on_a_folder(tmp_path, classes=2, per_class=4, **{"model.name": "resnet18"})
    blob = torch.load(tmp_path / "ck" / "best.pt", weights_only=True)
    for key in ("normalisation", "mean", "std"):
        del blob[key]
    blob["config"]["model"]["init"] = "imagenet"
    torch.save(blob, tmp_path / "old.pt")
    assert prediction_grid(tmp_path / "old.pt", tmp_path / "grid.png", n=4).stat().st_size > 1000

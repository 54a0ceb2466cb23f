"""A trained model on new images: one prediction per image, the same accuracy as the model's own
evaluation of those images, unreadable images listed while the rest are predicted, and a clear
error for a folder with no images."""

import shutil

import pytest

from studyrunner.config import TrainConfig, apply_overrides
from studyrunner.engine.checkpoint import load_checkpoint
from studyrunner.engine.data import load_splits
from studyrunner.engine.decode import DataError
from studyrunner.engine.fit import fit
from studyrunner.engine.predict import find_images, predict_images
from studyrunner.engine.resolve import resolve_config
from tests.conftest import make_folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-class model trained 3 epochs on solid-colour 20 px images, and its data folder."""
    tmp = tmp_path_factory.mktemp("predict")
    root = make_folder(tmp / "own", classes=3, per_class=16, split="train", sizes=((24, 20),))
    make_folder(root, classes=3, per_class=5, split="val", sizes=((30, 20),))
    keys = {"data.dataset": "folder", "data.path": str(root), "data.image_size": 20, "data.cache_dir": str(tmp / "cache"),
            "epochs": 3, "batch_size": 16, "precision": "fp32", "optim.name": "adam", "optim.lr": 3e-3,
            "out_dir": str(tmp / "run")}  # fmt: skip
    cfg = resolve_config(apply_overrides(TrainConfig(), keys))
    result = fit(cfg, load_splits(cfg.data))
    return root, tmp / "run" / "best.pt", result


def test_predictions_match_the_models_own_evaluation_of_the_same_images(trained):
    root, best, result = trained
    found = predict_images(load_checkpoint(best), [root / "val"], top_k=2)
    assert len(found.rows) == 15 and not found.unreadable
    assert {r.true for r in found.rows} == {"c0", "c1", "c2"}  # class folders give the true labels
    assert found.accuracy == pytest.approx(result.best_val_acc)  # best.pt holds the best-validation weights
    assert result.best_val_acc > 0.5  # it learned (chance is 1/3)
    for r in found.rows:
        assert [c for c, _ in r.top_k][0] == r.predicted and len(r.top_k) == 2 and 0 < r.probability <= 1
    matrix = found.confusion()
    assert sum(map(sum, matrix)) == 15 and sum(matrix[i][i] for i in range(3)) == round(15 * found.accuracy)


def test_an_unreadable_image_is_listed_and_the_rest_are_predicted(trained, tmp_path):
    root, best, _ = trained
    shutil.copytree(root / "val", tmp_path / "new")
    (tmp_path / "new" / "c1" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "new" / "c2" / "lfs.png").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    found = predict_images(load_checkpoint(best), [tmp_path / "new"])
    assert len(found.rows) == 15 and sorted(p.name for p, _ in found.unreadable) == ["broken.jpg", "lfs.png"]
    assert any("Git LFS pointer" in why for _, why in found.unreadable)


def test_a_folder_with_no_images_and_a_missing_path_are_refused(tmp_path, trained):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images under"):
        find_images([tmp_path / "empty"], ["c0"])
    with pytest.raises(DataError, match="no such file or folder"):
        predict_images(load_checkpoint(trained[1]), [tmp_path / "nowhere"])


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    from studyrunner.errors import StudyrunnerError

    (tmp_path / "x.pt").write_text("hello")
    with pytest.raises(StudyrunnerError, match="not a readable studyrunner checkpoint"):
        load_checkpoint(tmp_path / "x.pt")

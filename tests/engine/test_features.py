"""Features of a frozen backbone: computed once, reused by later fits, recomputed when the
weights, the input size or the images change, and the same result as the full forward pass."""

import pytest
import torch

from studyrunner.config import apply_overrides
from studyrunner.engine import features as features_mod
from studyrunner.engine.data import Splits
from studyrunner.engine.decode import ImageSet
from studyrunner.engine.features import FeatureCache
from studyrunner.engine.fit import fit
from tests.conftest import pattern_images

ALL_COMPUTED = "(train computed now; val computed now; test computed now)"  # where each split's features came from
REUSED = "(train reused from this process; val reused from this process; test reused from this process)"
FROM_DISK = "(train read from the feature cache; val read from the feature cache; test read from the feature cache)"


@pytest.fixture
def frozen(tiny_splits, tiny_config, tmp_path, monkeypatch):
    """tiny_config frozen on a briefly trained backbone, with fresh (empty) feature caches."""
    monkeypatch.setattr(features_mod, "_CACHES", {})
    fit(apply_overrides(tiny_config, {"out_dir": str(tmp_path / "src"), "epochs": 2}), tiny_splits)
    return apply_overrides(tiny_config, {"model.init": str(tmp_path / "src" / "best.pt"), "model.freeze": "backbone"})


def _notes(result) -> str:
    return " ".join(result.notes)


def test_cached_features_give_the_full_forward_pass_result(tiny_splits, frozen):
    cached = fit(frozen, tiny_splits)
    full = fit(apply_overrides(frozen, {"model.feature_cache": False}), tiny_splits)
    assert "features per image, computed once and cached " + ALL_COMPUTED in _notes(cached)
    assert "full forward pass" in _notes(full)
    for a, b in zip(cached.history, full.history, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4) and a.val_acc == pytest.approx(b.val_acc, abs=1e-6)
    assert cached.val_confusion == full.val_confusion and cached.test_acc == pytest.approx(full.test_acc, abs=1e-6)
    assert cached.history[-1].val_acc > 0.5  # the head learnt (chance is 0.25)


def test_features_are_reused_in_process_then_from_disk(tiny_splits, frozen, monkeypatch):
    fit(frozen, tiny_splits)
    assert REUSED in _notes(fit(apply_overrides(frozen, {"seed": 1}), tiny_splits))
    monkeypatch.setattr(features_mod, "_CACHES", {})  # a new worker process: only the disk cache is left
    calls = []
    real = features_mod.extract
    monkeypatch.setattr("studyrunner.engine.fit.extract", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert FROM_DISK in _notes(fit(frozen, tiny_splits)) and not calls


def test_other_weights_sizes_or_images_are_never_served_stale_features(tiny_splits, tiny_config, frozen, tmp_path):
    fit(frozen, tiny_splits)
    fit(apply_overrides(tiny_config, {"out_dir": str(tmp_path / "other"), "epochs": 1, "seed": 5}), tiny_splits)
    other_weights = apply_overrides(frozen, {"model.init": str(tmp_path / "other" / "best.pt")})
    assert ALL_COMPUTED in _notes(fit(other_weights, tiny_splits))
    changed = tiny_splits.train.images.clone()
    changed[0] = 255 - changed[0]  # one training image differs
    other_images = Splits(ImageSet(changed, tiny_splits.train.labels, tiny_splits.classes), *list(vars(tiny_splits).values())[1:])
    one_new = "(train computed now; val reused from this process; test reused from this process)"
    assert one_new in _notes(fit(frozen, other_images))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2, 2)
    )
    head = model[3]
    small, large = pattern_images(4, size=20).images, pattern_images(4, size=24).images
    keys = {features_mod.digest(model, head, x, extra) for x in (small, large) for extra in ("20", "24")}
    assert len(keys) == 4  # another input size (images and key text) never shares a key
    before = features_mod.digest(model, head, small, "20")
    with torch.no_grad():
        head.weight.zero_()  # the head is not part of the key: it is what trains
    assert features_mod.digest(model, head, small, "20") == before


def test_augmentation_that_changes_every_epoch_runs_the_full_forward_pass(tiny_splits, frozen):
    result = fit(apply_overrides(frozen, {"augment.flip": True}), tiny_splits)
    assert "full forward pass every batch: the augmentation changes every epoch" in _notes(result)


def test_a_damaged_cache_file_is_recomputed(tmp_path):
    cache = FeatureCache(tmp_path)
    first, where = cache.get("k" * 40, lambda: torch.ones(3, 2))
    assert where == "computed"
    (tmp_path / f"features-{'k' * 24}.pt").write_bytes(b"junk")
    again, where = FeatureCache(tmp_path).get("k" * 40, lambda: torch.zeros(3, 2))
    assert where == "computed" and torch.equal(again, torch.zeros(3, 2))

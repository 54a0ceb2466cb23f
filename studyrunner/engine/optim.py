"""Optimizer and LR-scheduler factories.

``Schedule`` hides the two stepping styles behind one object: one-cycle steps every batch, the
others once per epoch (ReduceLROnPlateau with the monitored validation metric).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import lr_scheduler as sched

from studyrunner.config import OptimConfig, SchedConfig
from studyrunner.engine.transfer import ALL, HEAD

__all__ = ["build_optimizer", "Schedule", "head_group", "take_hyperparameters"]


def build_optimizer(params: Iterable[Any], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov), Adam, AdamW or RMSprop, from ``cfg``.

    SGD, Adam and AdamW use torch's fused kernels (one kernel for all parameters; same maths).
    """
    params = list(params)
    if params and not isinstance(params[0], dict):  # bare tensors: one group, named as the transfer policy names it
        params = [{"name": ALL, "params": params, "lr": cfg.lr}]
    tensors = [p for g in params for p in g["params"]]
    fused = all(p.device.type in ("cpu", "cuda") for p in tensors)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
            fused=fused,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, fused=fused)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, fused=fused)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optim.name {cfg.name!r}; valid: sgd, adam, adamw, rmsprop")


class Schedule:
    """An LR schedule with ``after_batch()`` and ``after_epoch(metrics)`` hooks."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.optimizer = optimizer
        self.per_batch = cfg.name == "onecycle"
        self.head = head_group(optimizer)  # its index: a resumed state may carry groups without names
        self.impl: object | None = _build(optimizer, cfg, epochs, steps_per_epoch)

    def after_batch(self) -> None:
        if self.per_batch:
            self.impl.step()  # type: ignore[union-attr]

    def after_epoch(self, metrics: dict[str, float]) -> None:
        if self.impl is None or self.per_batch:
            return
        if isinstance(self.impl, sched.ReduceLROnPlateau):
            if self.cfg.monitor not in metrics:
                raise ValueError(f"sched.monitor {self.cfg.monitor!r} needs a validation split (data.val_fraction > 0)")
            self.impl.step(metrics[self.cfg.monitor])
        else:
            self.impl.step()  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        return {} if self.impl is None else dict(self.impl.state_dict())  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.impl is not None and state:
            self.impl.load_state_dict(state)  # type: ignore[attr-defined]

    @property
    def lr(self) -> float:
        """The head's learning rate."""
        return float(self.optimizer.param_groups[self.head]["lr"])


def head_group(opt: torch.optim.Optimizer) -> int:
    """The index of the group that holds the classifier head: the one named ``head``, or ``all`` when
    one group trains; an optimizer built without names (plain torch) has its head last, as torch's
    own fine-tuning recipes order them."""
    names = [g.get("name") for g in opt.param_groups]
    for name in (HEAD, ALL):
        if name in names:
            return names.index(name)
    return len(names) - 1


def _build(opt: torch.optim.Optimizer, cfg: SchedConfig, epochs: int, steps: int) -> object | None:
    if cfg.name == "none":
        return None
    head_lr = opt.param_groups[head_group(opt)]["lr"]  # sched.min_lr is the head's floor; other groups scale with their LR
    if cfg.name == "step":
        return sched.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.name == "multistep":
        return sched.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    if cfg.name == "plateau":
        return sched.ReduceLROnPlateau(
            opt,
            mode=cfg.mode,
            factor=cfg.factor,
            patience=cfg.patience,
            threshold=cfg.threshold,
            threshold_mode=cfg.threshold_mode,
            cooldown=cfg.cooldown,
            min_lr=[cfg.min_lr * g["lr"] / head_lr for g in opt.param_groups],
        )
    if cfg.name == "cosine":
        if cfg.min_lr == 0:
            return sched.CosineAnnealingLR(opt, T_max=epochs)
        floor = cfg.min_lr / head_lr  # as a share of each group's LR: a backbone at 0.1x decays to 0.1x the floor
        return sched.LambdaLR(opt, lambda e: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(e, epochs) / epochs)))
    if cfg.name == "onecycle":
        max_lr = [g["lr"] for g in opt.param_groups]
        return sched.OneCycleLR(opt, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps, pct_start=cfg.pct_start)
    raise ValueError(f"unknown sched.name {cfg.name!r}; valid: none, step, multistep, plateau, cosine, onecycle")


def take_hyperparameters(opt: torch.optim.Optimizer, saved_lr: float, cfg: OptimConfig) -> None:
    """A state copied from another run (PBT's exploit) goes on at ``cfg``'s learning rate (every
    group scaled alike from ``saved_lr``, so a backbone keeps its multiple), momentum and weight decay."""
    scale = cfg.lr / saved_lr
    for group in opt.param_groups:
        group["lr"] *= scale
        if "initial_lr" in group:
            group["initial_lr"] *= scale
        group["weight_decay"] = cfg.weight_decay
        if "momentum" in group:  # sgd, rmsprop
            group["momentum"] = cfg.momentum

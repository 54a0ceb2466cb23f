"""The transfer policy: which parameters train, at which learning rate, from which epoch the
backbone trains, and which BatchNorm statistics stay fixed. The engine asks one small object.

* ``model.freeze: backbone`` trains the classifier head only; the frozen backbone's BatchNorm
  layers stay in eval mode (their running statistics are part of what was pretrained).
* ``model.unfreeze_epoch: N`` trains the whole network from epoch N on (document 001).
* ``optim.backbone_lr_mult`` gives the backbone ``lr x mult`` and the head ``lr``.
* Backbone tensors the weights did not supply (``fresh``: say a CIFAR stem on ImageNet weights)
  always train, and their norms keep learning: freezing random weights would help no one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from studyrunner.config import TrainConfig
from studyrunner.engine.models import head_parameters

__all__ = ["TransferPolicy", "backbone_parameters", "HEAD", "BACKBONE", "ALL"]

HEAD, BACKBONE, ALL = "head", "backbone", "all"  # optimizer parameter-group names


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter that is not in the classifier head."""
    head = {id(p) for p in head_parameters(model)}
    return [p for p in model.parameters() if id(p) not in head]


@dataclass(frozen=True)
class TransferPolicy:
    freeze: bool = False  # the backbone starts frozen
    unfreeze_epoch: int = 0  # 1-based epoch from which everything trains; 0 = never
    backbone_lr_mult: float = 1.0  # backbone LR = head LR x this
    lr: float = 1e-3  # the head's learning rate (optim.lr)
    fresh: frozenset[str] = field(default_factory=frozenset)  # backbone parameters not loaded: they always train

    @classmethod
    def from_config(cls, cfg: TrainConfig, fresh: frozenset[str] = frozenset()) -> TransferPolicy:
        return cls(cfg.model.freeze == "backbone", cfg.model.unfreeze_epoch, cfg.optim.backbone_lr_mult, cfg.optim.lr, fresh)

    @property
    def fixed_backbone(self) -> bool:
        """The backbone never trains: its outputs are a fixed function of the input."""
        return self.freeze and self.unfreeze_epoch == 0 and not self.fresh

    def frozen_at(self, epoch: int) -> bool:
        return self.freeze and not (self.unfreeze_epoch and epoch >= self.unfreeze_epoch)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Named optimizer groups, each with its own learning rate: ``head`` at ``lr`` and ``backbone``
        at ``lr x backbone_lr_mult``, or one group ``all`` at ``lr`` when the two are equal. Schedules
        find the head by its name (``optim.head_group``), never by position."""
        backbone = backbone_parameters(model)
        if self.backbone_lr_mult == 1.0 or not backbone:  # one LR, or a head alone (trained on cached features)
            return [{"name": ALL, "params": list(model.parameters()), "lr": self.lr}]
        return [
            {"name": BACKBONE, "params": backbone, "lr": self.lr * self.backbone_lr_mult},
            {"name": HEAD, "params": head_parameters(model), "lr": self.lr},
        ]

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        """Put ``model`` in training mode for ``epoch``: gradients on what trains now, frozen
        BatchNorm layers in eval mode so their statistics stay as loaded."""
        model.train()
        frozen = self.frozen_at(epoch)
        names = {id(p): n for n, p in model.named_parameters()}
        for p in backbone_parameters(model):
            p.requires_grad_(not frozen or names[id(p)] in self.fresh)
        if frozen:
            self._fix_norms(model)

    def _fix_norms(self, model: nn.Module) -> None:
        head = {id(p) for p in head_parameters(model)}
        for name, m in model.named_modules():
            if not isinstance(m, nn.modules.batchnorm._BatchNorm) or any(id(p) in head for p in m.parameters()):
                continue
            if not any(f"{name}.{n}" in self.fresh for n, _ in m.named_parameters()):
                m.eval()

"""Models by name: the documents' CIFAR "AlexNet", torchvision ResNets and AlexNet.

``build_model(cfg, num_classes)`` is the one entry point; an unknown name is an error listing the
valid ones. Every model ends in a fresh classifier head sized for ``num_classes``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tvm

from .config import ConfigError, ModelConfig

__all__ = ["CifarAlexNet", "MODELS", "build_model", "head_parameters"]


def _conv_block(cin: int, cout: int, k: int, batchnorm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    return layers + [nn.ReLU(inplace=True)]


class CifarAlexNet(nn.Module):
    """Document 004's network: conv 64/128/256/64 (3x3, 3x3, 3x3, 1x1), fc 384/192/classes.

    ``batchnorm`` puts BatchNorm after every conv (its step 5); ``dropout`` gives the probability
    after pool1, pool2, conv4 and fc1 (its step 6). The document's softmax before the loss is a
    bug and is left out: the network returns logits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        batchnorm: bool = False,
        dropout: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0),
        image_size: int = 32,
    ) -> None:
        super().__init__()
        p1, p2, p3, p4 = dropout
        self.features = nn.Sequential(
            *_conv_block(3, 64, 3, batchnorm),
            nn.MaxPool2d(2, 2),
            nn.Dropout(p1),
            *_conv_block(64, 128, 3, batchnorm),
            nn.MaxPool2d(3, 2),
            nn.Dropout(p2),
            *_conv_block(128, 256, 3, batchnorm),
            *_conv_block(256, 64, 1, batchnorm),
            nn.Dropout(p3),
        )
        side = ((((image_size - 2) // 2) - 2) - 3) // 2 + 1 - 2  # 32 px -> 4
        if side < 1:
            raise ConfigError(f"cifar_alexnet needs data.image_size >= 20 pixels, got {image_size}")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 384),
            nn.ReLU(inplace=True),
            nn.Dropout(p4),
            nn.Linear(384, 192),
            nn.ReLU(inplace=True),
            nn.Linear(192, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _resnet(fn: Callable[..., tvm.ResNet]) -> Callable[[ModelConfig, int, int], nn.Module]:
    def build(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
        net = fn(weights=None, num_classes=num_classes)
        if cfg.cifar_stem:  # small images: keep resolution in the stem
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()  # type: ignore[assignment]
        return net

    return build


def _cifar_alexnet(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    return CifarAlexNet(num_classes, cfg.batchnorm, cfg.dropout, image_size)


def _alexnet(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    if image_size < 63:
        raise ConfigError(f"alexnet needs data.image_size >= 63 pixels, got {image_size}; use cifar_alexnet for 32 px")
    return tvm.alexnet(weights=None, num_classes=num_classes)


MODELS: dict[str, Callable[[ModelConfig, int, int], nn.Module]] = {
    "cifar_alexnet": _cifar_alexnet,
    "resnet18": _resnet(tvm.resnet18),
    "resnet34": _resnet(tvm.resnet34),
    "resnet50": _resnet(tvm.resnet50),
    "alexnet": _alexnet,
}


def build_model(cfg: ModelConfig, num_classes: int, image_size: int = 32) -> nn.Module:
    """The model named by ``cfg.name`` with a ``num_classes`` head."""
    if cfg.name not in MODELS:
        raise ConfigError(f"unknown model.name {cfg.name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[cfg.name](cfg, num_classes, image_size)


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the final classifier layer (``fc`` of a ResNet, last Linear otherwise)."""
    if isinstance(model, tvm.ResNet):
        return list(model.fc.parameters())
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return list(last.parameters())

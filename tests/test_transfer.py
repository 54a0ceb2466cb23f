"""Own data and transfer learning: init from checkpoints and studies, freezing, unfreezing,
head replacement, class selection, the offline message for ImageNet weights."""

import urllib.error

import pytest
import torch

from studyrunner.config import ConfigError, ModelConfig, TrainConfig, apply_overrides
from studyrunner.data import DataError, load_splits
from studyrunner.engine import fit
from studyrunner.models import backbone_parameters, build_model, head_parameters, load_init
from studyrunner.spec import load_narrative
from studyrunner.study import RunOptions, run_narrative

from .conftest import make_folder, write_sweep


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
    conv = "features.0.weight"
    assert torch.equal(two[conv], start[conv])  # epochs 1-2 frozen
    assert not torch.equal(four[conv], start[conv])  # epoch 3 on: the backbone trains
    with pytest.raises(ConfigError, match="unfreeze_epoch needs model.freeze=backbone"):
        apply_overrides(tiny_config, {"model.unfreeze_epoch": 2})


def test_backbone_lr_multiplier_builds_two_groups(tiny_splits, tiny_config):
    cfg = apply_overrides(tiny_config, {"optim.backbone_lr_mult": 0.1, "epochs": 1})
    result = fit(cfg, tiny_splits)
    assert result.history[0].lr == pytest.approx(2e-3)  # the head's LR is reported


@pytest.mark.parametrize("classes", [2, 3, 7])
def test_init_from_an_earlier_checkpoint_with_another_class_count(tiny_splits, tiny_config, tmp_path, classes):
    fit(apply_overrides(tiny_config, {"out_dir": str(tmp_path / "src"), "epochs": 1}), tiny_splits)
    cfg = ModelConfig(batchnorm=True, init=str(tmp_path / "src" / "best.pt"))
    model = build_model(cfg, classes, 20)
    summary = load_init(model, cfg)
    src = torch.load(tmp_path / "src" / "best.pt", weights_only=True)["model"]
    assert torch.equal(model.state_dict()["features.0.weight"], src["features.0.weight"])
    assert head_parameters(model)[0].shape[0] == classes and "head fresh" in summary
    assert len(backbone_parameters(model)) + len(head_parameters(model)) == len(list(model.parameters()))


def test_init_errors_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="neither scratch, imagenet, study:NAME nor an existing file"):
        load_init(build_model(ModelConfig(), 3), ModelConfig(init=str(tmp_path / "none.pt")))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot read"):
        load_init(build_model(ModelConfig(), 3), ModelConfig(init=str(tmp_path / "junk.pt")))
    torch.save({"x": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="no tensor matches"):
        load_init(build_model(ModelConfig(), 3), ModelConfig(init=str(tmp_path / "other.pt")))


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


def test_class_selection_and_validation_from_the_test_folder(tmp_path):
    root = make_folder(tmp_path / "d", classes=4, per_class=6, split="train", sizes=((32, 32),))
    make_folder(root, classes=4, per_class=3, split="test", sizes=((32, 32),))
    cfg = apply_overrides(
        TrainConfig(),
        {"data.path": str(root), "data.classes": ["c1", "c3"], "data.val_from": "test", "data.cache_dir": str(tmp_path / "c")},
    ).data
    s = load_splits(cfg)
    assert s.classes == ["c1", "c3"] and len(s.train) == 12 and len(s.val) == 6 and s.test is None
    assert sorted(s.train.labels.unique().tolist()) == [0, 1]
    with pytest.raises(DataError, match=r"\['c9'\] not found"):
        load_splits(
            apply_overrides(
                TrainConfig(), {"data.path": str(root), "data.classes": ["c1", "c9"], "data.cache_dir": str(tmp_path / "c")}
            ).data
        )


def test_confusion_matrix_and_per_class_accuracy(tiny_splits, tiny_config):
    result = fit(tiny_config, tiny_splits)
    cm = torch.tensor(result.val_confusion)
    assert cm.shape == (4, 4) and int(cm.sum()) == len(tiny_splits.val)
    assert result.classes == tiny_splits.classes
    assert sum(result.per_class_val_acc.values()) / 4 == pytest.approx(result.best_val_acc, abs=0.05)


STORY = """\
study: tl
repeats: 2
scales: {reduced: {}}
base:
  optim: {name: adam, lr: 0.003}
  model: {batchnorm: true}
steps:
  - name: pre
    title: pretrain
    repeats: 1
    train: {data: {classes: [c0, c1, c2]}}
  - name: ft
    title: fine-tune
    train: {data: {classes: [c3, c4]}, model: {init: "step:pre"}}
  - name: fz
    title: frozen
    train: {data: {classes: [c3, c4]}, model: {init: "step:pre", freeze: backbone}}
"""


def test_narrative_steps_start_from_an_earlier_steps_best_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = make_folder(tmp_path / "five", classes=5, per_class=12, split="train", sizes=((20, 20),))
    make_folder(root, classes=5, per_class=3, split="val", sizes=((20, 20),))
    data = f"  data: {{dataset: folder, path: '{root}', image_size: 20, cache_dir: '{tmp_path / 'c'}'}}\n  epochs: 2\n"
    spec = load_narrative(write_sweep(tmp_path, STORY.replace("base:\n", "base:\n" + data), "tl.yaml"))
    outcomes = run_narrative(spec, "reduced", RunOptions(storage=f"sqlite:///{tmp_path / 'o.db'}", tracking_uri="none"))
    assert [len(o.study.trials) for o in outcomes] == [1, 2, 2]
    pre_ckpt = outcomes[0].study.best_trial.user_attrs["checkpoint"]
    for o in outcomes[1:]:
        for t in o.study.trials:
            assert t.state.name == "COMPLETE" and t.user_attrs["classes"] == ["c3", "c4"]
    assert (tmp_path / "runs" / "checkpoints").is_dir() and pre_ckpt.endswith("best.pt")
    with pytest.raises(Exception, match="must name an earlier step"):
        bad = STORY.replace('init: "step:pre"}}\n  - name: fz', 'init: "step:fz"}}\n  - name: fz')
        load_narrative(write_sweep(tmp_path, bad.replace("base:\n", "base:\n" + data), "bad.yaml"))


def test_own_folder_of_mixed_sizes_and_modes_trains_a_resnet(tmp_path):
    root = make_folder(
        tmp_path / "own",
        classes=2,
        per_class=4,
        split="train",
        modes=("RGB", "L", "RGBA", "P"),
        sizes=((40, 30), (64, 64), (20, 50)),
    )
    make_folder(root, classes=2, per_class=2, split="val", modes=("L", "RGBA"), sizes=((33, 33),))
    cfg = apply_overrides(
        TrainConfig(),
        {
            "data.dataset": "folder",
            "data.path": str(root),
            "data.image_size": 32,
            "model.name": "resnet18",
            "epochs": 1,
            "batch_size": 4,
            "precision": "fp32",
            "data.cache_dir": str(tmp_path / "c"),
        },
    )
    result = fit(cfg, load_splits(cfg.data))
    assert result.outcome == "completed" and len(result.history) == 1 and result.classes == ["c0", "c1"]


def test_prediction_grid_from_a_checkpoint(tmp_path):
    from studyrunner.gallery import prediction_grid

    root = make_folder(tmp_path / "own", classes=3, per_class=8, split="train", sizes=((20, 20),))
    make_folder(root, classes=3, per_class=4, split="val", sizes=((20, 20),))
    cfg = apply_overrides(TrainConfig(), {"data.dataset": "folder", "data.path": str(root), "data.image_size": 20,
                                          "epochs": 1, "precision": "fp32", "out_dir": str(tmp_path / "ck"),
                                          "data.cache_dir": str(tmp_path / "c")})
    fit(cfg, load_splits(cfg.data))
    png = prediction_grid(tmp_path / "ck" / "best.pt", tmp_path / "grid.png", n=12)
    assert png.stat().st_size > 5000

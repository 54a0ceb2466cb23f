"""Own data and transfer learning: init from checkpoints and studies, freezing, unfreezing,
head replacement, class selection, the offline message for ImageNet weights."""

import json
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
    conv, norm = "features.0.weight", "features.1.running_mean"
    assert torch.equal(two[conv], start[conv]) and torch.equal(two[norm], start[norm])  # epochs 1-2 frozen, statistics too
    assert not torch.equal(four[conv], start[conv])  # epoch 3 on: the backbone trains
    assert not torch.equal(four[norm], start[norm])  # and its BatchNorm statistics follow the data again
    with pytest.raises(ConfigError, match="unfreeze_epoch needs model.freeze=backbone"):
        apply_overrides(tiny_config, {"model.unfreeze_epoch": 2})


def test_backbone_lr_multiplier_builds_two_groups(tiny_splits, tiny_config):
    cfg = apply_overrides(tiny_config, {"optim.backbone_lr_mult": 0.1, "epochs": 1})
    result = fit(cfg, tiny_splits)
    assert result.history[0].lr == pytest.approx(2e-3)  # the head's LR is reported


@pytest.mark.parametrize(
    "sched",
    [{"sched.name": "cosine", "sched.min_lr": 1e-4}, {"sched.name": "plateau", "sched.min_lr": 1e-4, "sched.patience": 0}],
)
def test_schedules_keep_the_backbone_at_its_share_of_the_head_lr(sched):
    from studyrunner.engine import _param_groups
    from studyrunner.optim import Schedule, build_optimizer

    cfg = apply_overrides(
        TrainConfig(), {"optim.name": "adam", "optim.lr": 1e-3, "optim.backbone_lr_mult": 0.1, "epochs": 10, **sched}
    )
    opt = build_optimizer(_param_groups(build_model(cfg.model, 3), cfg), cfg.optim)
    schedule = Schedule(opt, cfg.sched, cfg.epochs, 1)
    seen = []
    for _ in range(cfg.epochs):
        opt.step()  # no gradients: nothing moves, but the scheduler sees a stepped optimizer
        schedule.after_epoch({"val_acc": 0.5})  # flat: the plateau schedule decays every epoch
        backbone, head = (g["lr"] for g in opt.param_groups)
        assert backbone == pytest.approx(0.1 * head) and head >= 1e-4 - 1e-12
        seen.append(head)
    assert seen[-1] == pytest.approx(1e-4) and seen[0] > seen[-1]  # decayed to the head's floor, the backbone to a tenth of it


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


def test_own_folder_of_mixed_sizes_and_modes_trains_a_resnet(tmp_path, monkeypatch):
    """The documented command, on train/ and val/ folders of RGB, grayscale (8 and 16 bit), RGBA
    and palette images of several sizes."""
    from typer.testing import CliRunner

    from studyrunner.cli import app

    root = make_folder(
        tmp_path / "own",
        classes=2,
        per_class=5,
        split="train",
        modes=("RGB", "L", "RGBA", "P", "I;16"),
        sizes=((40, 30), (64, 64), (20, 50), (90, 70)),
    )
    make_folder(root, classes=2, per_class=2, split="val", modes=("L", "RGBA"), sizes=((33, 33),))
    monkeypatch.setenv("STUDYRUNNER_CACHE_DIR", str(tmp_path / "c"))
    args = ["train", "--set", "data.dataset=folder", "--set", f"data.path={root}", "--set", "data.image_size=64"]
    args += ["--set", "model.name=resnet18", "--set", "epochs=1", "--set", "batch_size=4", "--set", "precision=fp32"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ck"), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["outcome"] == "completed" and result["classes"] == ["c0", "c1"] and len(result["history"]) == 1
    blob = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    assert blob["config"]["data"]["image_size"] == 64 and blob["config"]["model"]["name"] == "resnet18"


def _checkpoint_on_a_folder(tmp_path, classes: int, per_class: int, **overrides) -> None:
    """One epoch on a 20 px own-data folder (train + val), checkpoints in tmp_path/ck."""
    root = make_folder(tmp_path / "own", classes=classes, per_class=per_class, split="train", sizes=((20, 20),))
    make_folder(root, classes=classes, per_class=per_class // 2, split="val", sizes=((20, 20),))
    own = {"data.dataset": "folder", "data.path": str(root), "data.image_size": 20, "data.cache_dir": str(tmp_path / "c")}
    cfg = apply_overrides(TrainConfig(), {**own, "epochs": 1, "precision": "fp32", "out_dir": str(tmp_path / "ck"), **overrides})
    fit(cfg, load_splits(cfg.data))


def test_prediction_grid_from_a_checkpoint(tmp_path):
    from studyrunner.gallery import prediction_grid

    _checkpoint_on_a_folder(tmp_path, classes=3, per_class=8)
    png = prediction_grid(tmp_path / "ck" / "best.pt", tmp_path / "grid.png", n=12)
    assert png.stat().st_size > 5000


def _fake_imagenet(monkeypatch, name="resnet18"):
    """torchvision's ImageNet weights for ``name`` as if downloaded (random values, right shapes)."""
    from torchvision import models as tvm

    from studyrunner.models import _WEIGHTS

    weights = getattr(tvm, _WEIGHTS[name]).DEFAULT
    state = getattr(tvm, name)(weights=None).state_dict()
    monkeypatch.setattr(type(weights), "get_state_dict", lambda self, *a, **k: state)
    return weights, state


def test_imagenet_weights_bring_their_input_size_stem_and_normalisation(tmp_path, monkeypatch):
    from studyrunner.models import IMAGENET_MEAN, imagenet_pretrained, resolve_input

    weights, state = _fake_imagenet(monkeypatch)
    cfg = apply_overrides(TrainConfig(), {"model.name": "resnet18", "model.init": "imagenet"})
    assert resolve_input(cfg).data.image_size == 224  # auto follows the weights' pretraining
    assert resolve_input(apply_overrides(cfg, {"data.image_size": 64})).data.image_size == 64  # an explicit size wins
    assert resolve_input(TrainConfig()).data.image_size == 32
    model = build_model(cfg.model, 3)
    assert model.conv1.kernel_size == (7, 7)  # ImageNet's stem, so every pretrained tensor loads
    init = load_init(model, cfg.model)
    assert init.imagenet and not init.fresh and torch.equal(model.conv1.weight, state["conv1.weight"])

    root = make_folder(tmp_path / "own", classes=2, per_class=2, split="train", sizes=((50, 40),))
    make_folder(root, classes=2, per_class=1, split="val", sizes=((40, 40),))
    own = {"data.dataset": "folder", "data.path": str(root), "data.cache_dir": str(tmp_path / "c")}
    run = resolve_input(apply_overrides(cfg, {**own, "epochs": 1, "precision": "fp32", "out_dir": str(tmp_path / "ck")}))
    result = fit(run, load_splits(run.data))
    blob = torch.load(tmp_path / "ck" / "best.pt", weights_only=True)
    assert result.outcome == "completed" and blob["config"]["data"]["image_size"] == 224
    assert blob["normalisation"] == "imagenet" and blob["mean"] == pytest.approx(IMAGENET_MEAN)
    from studyrunner.gallery import prediction_grid  # rebuilds the ImageNet stem, normalises as in training

    assert prediction_grid(tmp_path / "ck" / "best.pt", tmp_path / "grid.png", n=2).stat().st_size > 1000
    # a checkpoint of that run, and torchvision's file under its published name, count as ImageNet weights too
    assert imagenet_pretrained(str(tmp_path / "ck" / "best.pt"))
    torch.save(state, tmp_path / weights.url.rsplit("/", 1)[-1])
    assert imagenet_pretrained(str(tmp_path / weights.url.rsplit("/", 1)[-1]))
    assert not imagenet_pretrained("scratch") and not imagenet_pretrained(str(tmp_path / "elsewhere.pt"))


def test_freezing_never_freezes_tensors_the_weights_did_not_supply(tiny_splits, tmp_path):
    """ImageNet-shaped resnet weights under the small-image stem: conv1 stays fresh, so it trains
    even with model.freeze=backbone; every loaded tensor stays put."""
    from torchvision import models as tvm

    torch.save(tvm.resnet18(weights=None).state_dict(), tmp_path / "weights.pt")
    cfg = apply_overrides(
        TrainConfig(),
        {
            "model.name": "resnet18",
            "model.init": str(tmp_path / "weights.pt"),
            "model.freeze": "backbone",
            "data.image_size": 20,
            "epochs": 1,
            "batch_size": 32,
            "precision": "fp32",
            "out_dir": str(tmp_path / "ck"),
        },
    )
    start = torch.load(tmp_path / "weights.pt", weights_only=True)
    result = fit(cfg, tiny_splits)
    end = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)["model"]
    assert "1 others fresh" in result.init
    torch.manual_seed(cfg.seed)
    assert not torch.equal(end["conv1.weight"], build_model(cfg.model, 4, 20).conv1.weight)  # fresh: it trained
    assert torch.equal(end["layer1.0.conv1.weight"], start["layer1.0.conv1.weight"])  # loaded: frozen
    assert torch.equal(end["layer1.0.bn1.running_mean"], start["layer1.0.bn1.running_mean"])


def test_prediction_grid_names_an_unreadable_checkpoint(tmp_path):
    from studyrunner.errors import StudyrunnerError
    from studyrunner.gallery import prediction_grid

    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(StudyrunnerError, match="best.pt: not a readable studyrunner checkpoint"):
        prediction_grid(tmp_path / "best.pt", tmp_path / "grid.png")


def test_prediction_grid_from_a_checkpoint_saved_before_normalisation_was_recorded(tmp_path):
    """Older checkpoints have no ``normalisation``: a resnet with init=imagenet was built with the
    small-image stem then, and the grid must rebuild that, not the ImageNet stem."""
    from studyrunner.gallery import prediction_grid

    _checkpoint_on_a_folder(tmp_path, classes=2, per_class=4, **{"model.name": "resnet18"})
    blob = torch.load(tmp_path / "ck" / "best.pt", weights_only=True)
    for key in ("normalisation", "mean", "std"):
        del blob[key]
    blob["config"]["model"]["init"] = "imagenet"
    torch.save(blob, tmp_path / "old.pt")
    assert prediction_grid(tmp_path / "old.pt", tmp_path / "grid.png", n=4).stat().st_size > 1000

"""A trained model exported as ONNX and TorchScript: the files give PyTorch's logits on fresh
images from plain [0, 1] pixels (the normalisation is inside), carry the preprocessing and the
classes, and an image decoded as their metadata says is predicted as `predict` predicts it. An
export that does not match PyTorch is refused and leaves nothing behind."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

from studyrunner.config import TrainConfig, apply_overrides
from studyrunner.engine.checkpoint import Checkpoint, load_checkpoint
from studyrunner.engine.data import load_splits
from studyrunner.engine.export import TORCHSCRIPT_METADATA, check_export_format, export_model, metadata_path
from studyrunner.engine.fit import fit
from studyrunner.engine.predict import find_images, predict_images
from studyrunner.engine.resolve import resolve_config
from studyrunner.errors import StudyrunnerError
from studyrunner.extras import MissingExtra
from tests.conftest import make_folder

SOURCE = {"study": "colours", "trial": 7, "checkpoint": "runs/checkpoints/colours/7/best.pt"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-class model trained 3 epochs on solid-colour 20 px images, and its data folder (the
    validation images are larger and not square, so decoding them resizes and crops)."""
    tmp = tmp_path_factory.mktemp("export")
    root = make_folder(tmp / "own", classes=3, per_class=16, split="train", sizes=((24, 20),))
    make_folder(root, classes=3, per_class=5, split="val", sizes=((30, 20), (20, 27), (41, 33)))
    keys = {"data.dataset": "folder", "data.path": str(root), "data.image_size": 20, "data.cache_dir": str(tmp / "cache"),
            "epochs": 3, "batch_size": 16, "precision": "fp32", "optim.name": "adam", "optim.lr": 3e-3,
            "model.batchnorm": True, "out_dir": str(tmp / "run")}  # fmt: skip
    cfg = resolve_config(apply_overrides(TrainConfig(), keys))
    result = fit(cfg, load_splits(cfg.data))
    assert result.best_val_acc > 0.5  # it learned (chance is 1/3)
    return root, load_checkpoint(tmp / "run" / "best.pt")


def fresh_pixels(n: int, seed: int = 123) -> torch.Tensor:
    return torch.rand(n, 3, 20, 20, generator=torch.Generator().manual_seed(seed))


def pytorch_logits(ckpt: Checkpoint, pixels: torch.Tensor) -> torch.Tensor:
    """The checkpoint's own logits, normalised here by hand: what the exported graph must do inside."""
    mean, std = torch.tensor(ckpt.mean).view(1, 3, 1, 1), torch.tensor(ckpt.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return ckpt.model((pixels - mean) / std)


def decode_as_the_metadata_says(path, meta) -> np.ndarray:
    """One image file -> float32 [3, S, S] in [0, 1], following the exported metadata only."""
    size, resize = meta["image_size"], meta["resize"]
    with Image.open(path) as src:
        im = (ImageOps.exif_transpose(src) or src).convert("RGB")
        if im.size != (size, size):
            scale = resize / min(im.size)
            im = im.resize(
                (max(resize, round(im.width * scale)), max(resize, round(im.height * scale))), Image.Resampling.BILINEAR
            )
            left, top = (im.width - size) // 2, (im.height - size) // 2
            im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0


def test_the_onnx_export_gives_pytorchs_logits_and_carries_its_preprocessing(trained, tmp_path):
    onnx, ort = pytest.importorskip("onnx"), pytest.importorskip("onnxruntime")
    _, ckpt = trained
    result = export_model(ckpt, tmp_path / "m.onnx", "onnx", SOURCE)
    assert result.path == tmp_path / "m.onnx" and result.metadata_path == tmp_path / "m.onnx.json"
    assert result.batch_checked == 8 and result.max_abs_diff <= 1e-4
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (given,) = session.get_inputs()
    assert given.name == "pixels" and given.shape[1:] == [3, 20, 20] and isinstance(given.shape[0], str)  # a dynamic batch
    for n in (1, 5):  # batch sizes it was neither traced nor checked at
        pixels = fresh_pixels(n, seed=n)
        (logits,) = session.run(["logits"], {"pixels": pixels.numpy()})
        assert np.abs(logits - pytorch_logits(ckpt, pixels).numpy()).max() <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert json.loads(props["classes"]) == ckpt.classes == ["c0", "c1", "c2"]
    assert props["image_size"] == "20" and props["resize"] == "20" and props["study"] == "colours" and props["trial"] == "7"
    assert json.loads(props["mean"]) == pytest.approx(ckpt.mean) and json.loads(props["std"]) == pytest.approx(ckpt.std)
    side = json.loads(result.metadata_path.read_text())
    assert side["classes"] == ckpt.classes and side["input_shape"] == ["batch", 3, 20, 20] and side["format"] == "onnx"
    assert side["checked_max_abs_diff"] == result.max_abs_diff and side["file"] == "m.onnx"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_the_torchscript_export_gives_pytorchs_logits_with_its_metadata_inside(trained, tmp_path):
    _, ckpt = trained
    result = export_model(ckpt, tmp_path / "m.ts.pt", "torchscript", SOURCE)
    assert result.max_abs_diff <= 1e-4 and result.metadata_path == tmp_path / "m.ts.pt.json"
    extra = {TORCHSCRIPT_METADATA: ""}
    loaded = torch.jit.load(str(result.path), _extra_files=extra)
    pixels = fresh_pixels(5)
    with torch.inference_mode():
        assert (loaded(pixels) - pytorch_logits(ckpt, pixels)).abs().max() <= 1e-4
    inside = json.loads(extra[TORCHSCRIPT_METADATA])
    assert inside["classes"] == ckpt.classes and inside["image_size"] == 20 and inside["mean"] == pytest.approx(ckpt.mean)
    assert inside["std"] == pytest.approx(ckpt.std) and inside["trial"] == 7
    assert json.loads(result.metadata_path.read_text())["preprocessing"] == inside["preprocessing"]


def test_the_onnx_model_predicts_an_image_folder_as_predict_does(trained, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    root, ckpt = trained
    found = predict_images(ckpt, [root / "val"])
    result = export_model(ckpt, tmp_path / "m.onnx", "onnx", images=found.images)  # the check covers these images too
    assert result.batch_checked == 8 + 15 and result.max_abs_diff <= 1e-4
    meta = json.loads(metadata_path(result.path).read_text())
    files, _ = find_images([root / "val"], ckpt.classes)
    pixels = np.stack([decode_as_the_metadata_says(f, meta) for f in files])
    assert np.array_equal(pixels, found.images.numpy() / np.float32(255))  # the metadata's recipe is studyrunner's decoding
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"pixels": pixels})
    assert [meta["classes"][i] for i in logits.argmax(1)] == [r.predicted for r in found.rows]
    assert found.accuracy is not None and found.accuracy > 0.5


def test_a_model_the_torchscript_based_onnx_exporter_cannot_express_is_exported_all_the_same(trained, tmp_path, capfd):
    pytest.importorskip("onnx"), pytest.importorskip("onnxruntime"), pytest.importorskip("onnxscript")
    _, ckpt = trained
    torch.manual_seed(0)  # 9x9 pooled to 2x2: sizes that do not divide, as AlexNet's at small images
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)).eval()
    odd = Checkpoint(net, ckpt.config, ckpt.classes, ckpt.mean, ckpt.std, 1)
    result = export_model(odd, tmp_path / "odd.onnx", "onnx")
    assert result.max_abs_diff <= 1e-4
    assert "Torch IR graph" not in capfd.readouterr().out  # the first exporter's failure is not shown


class BatchDependent(nn.Module):
    """A network whose output depends on the batch size through Python: tracing freezes that."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean((2, 3))) * (2.0 if x.shape[0] > 4 else 1.0)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize(("fmt", "name"), [("torchscript", "b.ts.pt"), ("onnx", "b.onnx")])
def test_an_export_that_differs_from_pytorch_is_refused_and_leaves_no_file(trained, tmp_path, fmt, name):
    if fmt == "onnx":
        pytest.importorskip("onnx"), pytest.importorskip("onnxruntime")
    _, ckpt = trained
    frozen = Checkpoint(BatchDependent().eval(), ckpt.config, ckpt.classes, ckpt.mean, ckpt.std, 1)
    with pytest.raises(StudyrunnerError, match=rf"{name}: the exported {fmt} model's logits differ from PyTorch's by up to"):
        export_model(frozen, tmp_path / name, fmt)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_format_and_a_missing_extra_are_named(trained, tmp_path, monkeypatch):
    _, ckpt = trained
    with pytest.raises(StudyrunnerError, match="export format 'tflite': allowed onnx, torchscript"):
        export_model(ckpt, tmp_path / "m.tflite", "tflite")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the export extra were not installed
    with pytest.raises(MissingExtra, match=r"--format onnx needs the package onnxruntime, in studyrunner's 'export' extra"):
        check_export_format("onnx")
    check_export_format("torchscript")  # torch alone
    assert list(tmp_path.iterdir()) == []

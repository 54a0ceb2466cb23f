"""A trained model as a file that runs without studyrunner: ONNX (for onnxruntime and the runtimes
that read ONNX) or TorchScript (for ``torch.jit.load``, with no studyrunner or model code). The
normalisation the model was trained with is part of the exported graph, so a user feeds plain RGB
pixels in [0, 1], NCHW, at the training size; how to get there from an image file (the resize and
the centre crop) travels with the file, in its own metadata and in a JSON file beside it.

Nothing is reported as exported before the file itself has been run: its logits on a batch must
match PyTorch's within ``tolerance``, or the export fails and leaves no file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from studyrunner.engine.augment import normalize
from studyrunner.engine.checkpoint import Checkpoint
from studyrunner.errors import StudyrunnerError
from studyrunner.extras import require
from studyrunner.files import atomic_write

__all__ = [
    "EXPORT_FORMATS",
    "ExportResult",
    "NormalisedModel",
    "TORCHSCRIPT_METADATA",
    "check_export_format",
    "export_metadata",
    "export_model",
    "metadata_path",
]

EXPORT_FORMATS = ("onnx", "torchscript")
INPUT, OUTPUT = "pixels", "logits"  # the graph's input and output names
ONNX_OPSET = 17  # read by onnxruntime 1.12 and later, and most other ONNX runtimes
TORCHSCRIPT_METADATA = "studyrunner.json"  # the metadata inside a TorchScript file (torch.jit.load's _extra_files)
TRACE_BATCH = 2  # traced at 2 images and checked at more: the check also proves the batch axis is dynamic

Run = Callable[[torch.Tensor], torch.Tensor]  # an exported file's forward pass, as a function of a batch


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the exported model
    metadata_path: Path  # the JSON beside it: preprocessing, classes, source, the check
    format: str  # onnx | torchscript
    max_abs_diff: float  # the largest |logit| difference from PyTorch on the checked batch
    batch_checked: int  # images in that batch


class NormalisedModel(nn.Module):
    """The network with its input normalisation in front: [0, 1] RGB pixels in, logits out."""

    mean: torch.Tensor  # buffers: saved with the module, folded into the exported graph
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(normalize(pixels, self.mean, self.std))  # exactly as predict normalises
        return logits


def metadata_path(path: Path) -> Path:
    """The JSON beside an export: ``NAME.onnx`` -> ``NAME.onnx.json``, so an ONNX and a TorchScript
    export of the same model in one folder keep one each."""
    return path.with_name(path.name + ".json")


def export_metadata(checkpoint: Checkpoint, fmt: str, source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a user needs to feed the exported model and read its output, and where it came from."""
    data = checkpoint.config.data
    size, resize = data.image_size, max(data.resize, data.image_size)
    return {
        "format": fmt,
        "input_name": INPUT,
        "input_shape": ["batch", 3, size, size],
        "input_dtype": "float32",
        "input_range": [0.0, 1.0],
        "output_name": OUTPUT,
        "output_shape": ["batch", len(checkpoint.classes)],
        "image_size": size,
        "resize": resize,
        "preprocessing": (
            f"RGB (EXIF orientation applied); unless already {size}x{size}, the shorter side resized to {resize} px "
            f"(bilinear) and the centre {size}x{size} cropped; uint8 / 255 -> float32 in [0, 1], NCHW. "
            "The mean/std normalisation is inside the model: do not apply it again."
        ),
        "mean": list(checkpoint.mean),
        "std": list(checkpoint.std),
        "classes": list(checkpoint.classes),
        "model": checkpoint.config.model.name,
        "epoch": checkpoint.epoch,
        **dict(source or {}),
        "torch_version": torch.__version__,
    }


def check_export_format(fmt: str) -> None:
    """``fmt`` is one studyrunner exports and its packages are installed (``MissingExtra`` names the
    extra): asked before any work, so a missing package is said first, not after loading a model."""
    if fmt not in EXPORT_FORMATS:
        raise StudyrunnerError(f"export format {fmt!r}: allowed {', '.join(EXPORT_FORMATS)}")
    if fmt == "onnx":
        require("onnx", "export", "--format onnx")
        require("onnxruntime", "export", "--format onnx")


def export_model(
    checkpoint: Checkpoint,
    path: str | Path,
    fmt: str = "onnx",
    source: Mapping[str, Any] | None = None,
    images: torch.Tensor | None = None,
    batch_size: int = 8,
    tolerance: float = 1e-4,
) -> ExportResult:
    """Write ``checkpoint`` to ``path`` as ``fmt`` (onnx | torchscript) with its metadata, and the
    metadata again as JSON beside it, after checking the file's logits against PyTorch's on
    ``batch_size`` seeded random images plus ``images`` (uint8 or [0, 1] float, NCHW, at the
    training size), if given. ``source`` (study, trial, checkpoint) joins the metadata."""
    check_export_format(fmt)
    path = Path(path)
    size = checkpoint.config.data.image_size
    wrapper = NormalisedModel(checkpoint.model, checkpoint.mean, checkpoint.std).eval()
    batch = _check_batch(size, batch_size, images)
    meta = export_metadata(checkpoint, fmt, source)
    diffs: list[float] = []

    def write(tmp: Path) -> None:
        run = _write_onnx(wrapper, size, tmp, meta) if fmt == "onnx" else _write_torchscript(wrapper, size, tmp, meta)
        diff, largest = _max_difference(wrapper, run, batch)
        if not diff <= tolerance:  # NaN fails too
            raise StudyrunnerError(
                f"{path}: the exported {fmt} model's logits differ from PyTorch's by up to {diff:.3g} "
                f"on {len(batch)} images (logits up to {largest:.3g}; allowed {tolerance:g}); nothing was written"
            )
        diffs.append(diff)

    atomic_write(path, write)
    side = metadata_path(path)
    checked = {**meta, "file": path.name, "checked_max_abs_diff": diffs[-1], "checked_batch": len(batch)}
    atomic_write(side, lambda tmp: tmp.write_text(json.dumps(checked, indent=2) + "\n"))
    return ExportResult(path, side, fmt, diffs[-1], len(batch))


def _check_batch(size: int, batch_size: int, images: torch.Tensor | None) -> torch.Tensor:
    """Seeded random pixels in [0, 1], then the given images as [0, 1] floats."""
    if batch_size < 1:
        raise StudyrunnerError(f"export check: batch_size {batch_size} must be >= 1")
    batch = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0))
    if images is None or len(images) == 0:
        return batch
    if images.dim() != 4 or tuple(images.shape[1:]) != (3, size, size):
        raise StudyrunnerError(f"export check: images of shape {tuple(images.shape)}, the model takes [N, 3, {size}, {size}]")
    given = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return torch.cat([batch, given.cpu()])


def _max_difference(wrapper: nn.Module, run: Run, batch: torch.Tensor) -> tuple[float, float]:
    """The largest |exported - PyTorch| logit difference on ``batch``, and the largest |logit| (its scale)."""
    with torch.inference_mode():
        expected = wrapper(batch).float()
    got = run(batch)
    if got.shape != expected.shape:
        raise StudyrunnerError(
            f"the exported model returned logits of shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        )
    return float((got.float() - expected).abs().max()), float(expected.abs().max())


def _onnx_props(meta: Mapping[str, Any]) -> dict[str, str]:
    """ONNX metadata_props hold strings: text as it is, everything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _write_onnx(wrapper: nn.Module, size: int, path: Path, meta: Mapping[str, Any]) -> Run:
    onnx = require("onnx", "export", "--format onnx")
    ort = require("onnxruntime", "export", "--format onnx")
    _onnx_graph(wrapper, torch.rand(TRACE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(1)), path)
    graph = onnx.load(str(path))
    for key, value in _onnx_props(meta).items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])


def _onnx_graph(wrapper: nn.Module, sample: torch.Tensor, path: Path) -> None:
    """The graph, by torch's TorchScript-based exporter while it can express the model (fast, and it
    needs no onnxscript), else by its torch.export-based one (an adaptive pooling whose output does
    not divide its input, as AlexNet's at small sizes, and whatever the older one stops supporting)."""
    with warnings.catch_warnings(), torch.no_grad():
        # torch announces the TorchScript-based exporter's removal: the fallback below is the way on
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        try:
            with _output_shown_on_success():
                torch.onnx.export(
                    wrapper, (sample,), str(path), dynamo=False, input_names=[INPUT], output_names=[OUTPUT],
                    dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=ONNX_OPSET,
                )  # fmt: skip
            return
        except torch.onnx.OnnxExporterError:
            pass
    require("onnxscript", "export", "--format onnx (torch's torch.export-based ONNX exporter, for this model)")
    try:
        with torch.no_grad():  # its own opset (18 or later); the weights inside the file, which is renamed into place
            torch.onnx.export(
                wrapper, (sample,), str(path), dynamo=True, input_names=[INPUT], output_names=[OUTPUT],
                dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False,
            )  # fmt: skip
    except torch.onnx.OnnxExporterError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudyrunnerError(f"torch cannot export this model to ONNX ({first}); try --format torchscript") from None


@contextlib.contextmanager
def _output_shown_on_success() -> Iterator[None]:
    """Hold back what the process writes to stdout and stderr, and show it only if the block
    succeeds: torch's TorchScript-based exporter prints its whole IR graph (from C++, past
    sys.stdout) when it cannot express a model, and that attempt is followed by the other
    exporter, not by an error."""
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved = [(fd, os.dup(fd), held) for fd, held in ((1, out), (2, err))]
        for fd, _, held in saved:
            os.dup2(held.fileno(), fd)
        ok = False
        try:
            yield
            ok = True
        finally:
            for fd, copy, _ in saved:
                os.dup2(copy, fd)
                os.close(copy)
        for (_, _, held), stream in zip(saved, (sys.stdout, sys.stderr), strict=True):
            held.seek(0)
            stream.write(held.read().decode(errors="replace") if ok else "")


def _write_torchscript(wrapper: nn.Module, size: int, path: Path, meta: Mapping[str, Any]) -> Run:
    sample = torch.rand(TRACE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(), torch.no_grad():
        # the user asked for TorchScript, which torch now marks deprecated: said once in the README, not per call
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        traced = torch.jit.trace(wrapper, sample)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA: json.dumps(meta)})
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = loaded(x)
        return out

    return run

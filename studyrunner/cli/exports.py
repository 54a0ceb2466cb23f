"""``studyrunner export STUDY --best --format onnx|torchscript``: the best trial's model as a file
that runs without studyrunner, checked against PyTorch before it is reported written."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from studyrunner.cli.views import console
from studyrunner.errors import StudyrunnerError
from studyrunner.extras import MissingExtra

if TYPE_CHECKING:
    import optuna

__all__ = ["BEST_FORMATS", "BEST_SUFFIX", "require_model_format", "export_best_model"]

BEST_FORMATS = ("yaml", "onnx", "torchscript")  # what --best writes: the config, or the model
# .ts.pt, not .pt: a TorchScript file is no checkpoint (`predict` and model.init take best.pt files)
BEST_SUFFIX = {"yaml": ".yaml", "onnx": ".onnx", "torchscript": ".ts.pt"}
LOAD_WITH = {"onnx": 'onnxruntime.InferenceSession("{path}")', "torchscript": 'torch.jit.load("{path}")'}


def require_model_format(fmt: str) -> None:
    """Before any work: the packages ``fmt`` needs are installed, else the one line naming the extra."""
    from studyrunner.engine.export import check_export_format

    try:
        check_export_format(fmt)
    except MissingExtra as exc:  # printed here, escaped: its ".[export]" is no rich markup tag
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def export_best_model(study: optuna.Study, storage_url: str, fmt: str, path: Path) -> None:
    """Write the best trial's best-validation model to ``path`` as ``fmt``, and say in one line where,
    how closely it matches PyTorch, and how to load it."""
    from studyrunner.engine.checkpoint import load_checkpoint
    from studyrunner.engine.export import export_model
    from studyrunner.search.best import best_trial
    from studyrunner.search.trialconfig import best_checkpoint

    best = best_trial(study)
    if best is None:
        raise StudyrunnerError(f"study {study.study_name!r} has no completed trial yet: no model to export")
    found = best_checkpoint(study.study_name, storage_url)
    source = {"study": study.study_name, "trial": best.number, "checkpoint": found}
    result = export_model(load_checkpoint(found), path, fmt, source)
    console.print(
        f"wrote {path} (study {study.study_name}, trial {best.number}; max |logit difference| from PyTorch "
        f"{result.max_abs_diff:.1e} on {result.batch_checked} images; metadata in {result.metadata_path}); "
        f"load it with {LOAD_WITH[fmt].format(path=path)}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )

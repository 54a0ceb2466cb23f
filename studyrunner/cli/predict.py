"""``studyrunner predict MODEL PATH...``: a trained model on new images, as document 002 ends -
one CSV row per image, accuracy and the confusion matrix when the folders are class folders, and
a grid of predicted images."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from studyrunner.cli.guards import output_file, positive, user_errors
from studyrunner.cli.views import console, percent, progress_bar, wrapping_table
from studyrunner.errors import StudyrunnerError

if TYPE_CHECKING:
    from studyrunner.engine.predict import Predictions

__all__ = ["predict", "SHORT_HELP"]

SHORT_HELP = "Run a trained model (a checkpoint or study:NAME) on image files or folders."


@user_errors
def predict(
    model: Annotated[str, typer.Argument(help="A checkpoint file (best.pt), or study:NAME for that study's best trial.")],
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (walked recursively; class folders: accuracy).")],
    out: Annotated[Path, typer.Option(help="CSV of the predictions: path, predicted, probability, top_k.")] = Path(
        "runs/predictions.csv"
    ),
    top_k: Annotated[int, typer.Option("--top-k", help="Classes listed per image, most probable first.")] = 3,
    grid: Annotated[Path | None, typer.Option(help="Also draw the first 16 images, predicted (true), as a PNG.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    storage: Annotated[str | None, typer.Option(help="Optuna storage, for study:NAME (default runs/optuna.db).")] = None,
) -> None:
    """Predict image files or folders with a trained model and write one CSV row per image;
    class folders also give accuracy and the confusion matrix."""
    from studyrunner.engine.checkpoint import load_checkpoint
    from studyrunner.engine.predict import predict_images

    positive("--top-k", top_k)
    positive("--batch-size", batch_size)
    output_file("--out", out, create=True)
    output_file("--grid", grid, create=True)
    loaded = load_checkpoint(_checkpoint_file(model, storage))
    with progress_bar() as bar:
        task = bar.add_task("predicting", total=None)
        found = predict_images(loaded, paths, top_k, batch_size, lambda done, n: bar.update(task, completed=done, total=n))
    _write_csv(found, out)
    for path, why in found.unreadable:
        console.print(f"unreadable: {path}: {why}", highlight=False, soft_wrap=True)
    console.print(f"predicted {len(found.rows)} images ({len(found.unreadable)} unreadable) to {out}", highlight=False)
    if found.accuracy is not None:
        _print_confusion(found)
    if grid is not None:
        _draw_grid(found, grid)


def _checkpoint_file(model: str, storage: str | None) -> str:
    if model.startswith("models:/"):
        raise StudyrunnerError(
            f"{model}: models:/ URIs need the MLflow model registry, which this version does not write yet; "
            "give a checkpoint file (runs/checkpoints/STUDY/trial-N/best.pt) or study:NAME"
        )
    if model.startswith("study:"):
        from studyrunner.search.trialconfig import best_checkpoint
        from studyrunner.stores import resolve_storage

        return best_checkpoint(model.removeprefix("study:"), resolve_storage(storage))
    return model


def _write_csv(found: Predictions, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    labelled = bool(found.labelled)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "predicted", "probability", "top_k", *(["true"] if labelled else [])])
        for r in found.rows:
            top = ";".join(f"{c}:{p:.4f}" for c, p in r.top_k)
            writer.writerow([str(r.path), r.predicted, f"{r.probability:.4f}", top, *([r.true or ""] if labelled else [])])


def _print_confusion(found: Predictions) -> None:
    from rich.console import Console

    console.print(f"accuracy {percent(found.accuracy)} on {len(found.labelled)} images in class folders", highlight=False)
    table = wrapping_table("true \\ predicted", *found.classes, title="confusion matrix")
    for name, row in zip(found.classes, found.confusion(), strict=True):
        table.add_row(name, *map(str, row))
    Console().print(table)


def _draw_grid(found: Predictions, path: Path) -> None:
    from studyrunner.plots import close, prediction_figure

    assert found.images is not None  # predict_images keeps the decoded images
    n = min(16, len(found.rows))
    images = [found.images[i].permute(1, 2, 0).numpy() for i in range(n)]
    fig = prediction_figure(images, [(r.predicted, r.true or "?") for r in found.rows[:n]], title="predicted (true)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        close(fig)
    console.print(f"wrote {path}", highlight=False)

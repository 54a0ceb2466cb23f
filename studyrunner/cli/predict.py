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

if TYPE_CHECKING:
    from studyrunner.engine.checkpoint import Checkpoint
    from studyrunner.engine.predict import Predictions

__all__ = ["predict", "register", "SHORT_HELP", "REGISTER_HELP"]

SHORT_HELP = "Run a trained model (a checkpoint, study:NAME or models:/NAME@best) on image files or folders."
REGISTER_HELP = "Register a study's best model in the MLflow Model Registry (alias best)."


@user_errors
def predict(
    model: Annotated[str, typer.Argument(help="A checkpoint file (best.pt), study:NAME (its best trial) or models:/NAME@best.")],
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders (walked recursively; class folders: accuracy).")],
    out: Annotated[Path, typer.Option(help="CSV of the predictions: path, predicted, probability, top_k.")] = Path(
        "runs/predictions.csv"
    ),
    top_k: Annotated[int, typer.Option("--top-k", help="Classes listed per image, most probable first.")] = 3,
    grid: Annotated[Path | None, typer.Option(help="Also draw the first 16 images, predicted (true), as a PNG.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    storage: Annotated[str | None, typer.Option(help="Optuna storage, for study:NAME (default runs/optuna.db).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI, for models:/ (default runs/mlflow.db).")] = None,
) -> None:
    """Predict image files or folders with a trained model and write one CSV row per image;
    class folders also give accuracy and the confusion matrix."""
    from studyrunner.engine.predict import predict_images

    positive("--top-k", top_k)
    positive("--batch-size", batch_size)
    output_file("--out", out, create=True)
    output_file("--grid", grid, create=True)
    loaded = _load(model, storage, tracking_uri)
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


def _load(model: str, storage: str | None, tracking_uri: str | None) -> Checkpoint:
    """A checkpoint file, a study's best trial (study:NAME) or a registered model (models:/NAME@ALIAS, models:/NAME/N)."""
    from studyrunner.engine.checkpoint import load_checkpoint

    if model.startswith("models:/"):
        from studyrunner.stores import check_tracking, resolve_tracking_uri
        from studyrunner.track.registry import load_registered

        uri = resolve_tracking_uri(tracking_uri)
        check_tracking(uri)
        return load_registered(model, uri)
    if model.startswith("study:"):
        from studyrunner.search.trialconfig import best_checkpoint
        from studyrunner.stores import resolve_storage

        return load_checkpoint(best_checkpoint(model.removeprefix("study:"), resolve_storage(storage)))
    return load_checkpoint(model)


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


@user_errors
def register(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: Annotated[str | None, typer.Option(help="Optuna storage (default runs/optuna.db).")] = None,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI (default runs/mlflow.db).")] = None,
) -> None:
    """Register the study's best trial in the MLflow Model Registry as the study's name, alias best
    (as every tracked study does when it ends); registering the same trial again adds no version."""
    from studyrunner.report.results import load_study
    from studyrunner.search.best import register_study
    from studyrunner.stores import check_storage, check_tracking, resolve_storage, resolve_tracking_uri

    url = resolve_storage(storage)
    check_storage(url, must_exist=True)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking(uri)
    ok, line = register_study(load_study(study, url), uri)
    console.print(line, highlight=False, soft_wrap=True)
    if not ok:
        raise typer.Exit(1)

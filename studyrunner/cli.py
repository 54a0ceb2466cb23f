"""The ``studyrunner`` command line: each command a few lines over a library function.

Library errors (``StudyrunnerError``) become a one-paragraph message and exit code 1 here, in
one place; nothing else is caught.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .errors import StudyrunnerError

app = typer.Typer(
    name="studyrunner",
    help="Declarative hyperparameter studies for PyTorch image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set optim.lr=5e-4 (repeatable)."),
]
DataDirOpt = Annotated[
    str | None,
    typer.Option("--data-dir", help="Data root (else data.path or $STUDYRUNNER_DATA_DIR).", envvar="STUDYRUNNER_DATA_DIR"),
]


def user_errors(fn: F) -> F:
    """Turn a StudyrunnerError into a clean message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StudyrunnerError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}" if pct else f"{v:.4f}"


@app.command()
@user_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML of config keys (or a sweep file: its train: part).")] = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result (history, test metrics) here.")] = None,
    out: Annotated[str | None, typer.Option(help="Checkpoint folder (best.pt, last.pt); default runs/train/<time>.")] = None,
) -> None:
    """Train one configuration and print a per-epoch table."""
    from .config import config_to_dict, parse_assignments
    from .data import load_splits
    from .engine import fit
    from .spec import load_train_config

    overrides: dict[str, Any] = dict(parse_assignments(set_ or []))
    overrides.setdefault("out_dir", out or f"runs/train/{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = load_train_config(config, overrides)
    with _progress() as bar:
        task = bar.add_task("loading data", total=None)
        splits = load_splits(cfg.data, data_dir, lambda what, done, n: bar.update(task, description=what,
                                                                                  completed=done, total=n))
        bar.remove_task(task)
        console.print(f"train {len(splits.train)}  val {len(splits.val or [])}  test {len(splits.test or [])}  "
                      f"classes {len(splits.classes)}  model {cfg.model.name}")
        epoch_task = bar.add_task("epoch 1", total=None)
        table = Table("epoch", "train loss", "train acc %", "val loss", "val acc %", "lr", "s", "img/s")

        def on_epoch(r: Any) -> None:
            row = (str(r.epoch), _fmt(r.train_loss), _fmt(r.train_acc, True), _fmt(r.val_loss),
                   _fmt(r.val_acc, True), f"{r.lr:.2e}", f"{r.epoch_seconds:.1f}", f"{r.images_per_s:.0f}")
            table.add_row(*row)
            bar.console.print("  ".join(row), highlight=False)
            bar.update(epoch_task, description=f"epoch {r.epoch + 1}", completed=0)

        result = fit(cfg, splits, on_epoch, lambda done, n: bar.update(epoch_task, completed=done, total=n))
    console.print(table)
    test = f"test acc {_fmt(result.test_acc, True)}%  test loss {_fmt(result.test_loss)}" if result.test_acc is not None else ""
    console.print(f"{result.outcome}{': ' + result.reason if result.reason else ''}  best epoch {result.best_epoch}  "
                  f"{test}  [{result.device}, {result.precision}]  checkpoints in {cfg.out_dir}", highlight=False)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({**result.to_dict(), "config": config_to_dict(cfg)}, indent=2))


@app.command()
@user_errors
def bench(
    data_dir: DataDirOpt = None,
    images: Annotated[int, typer.Option(help="Training images timed per pipeline.")] = 6000,
    batch_size: Annotated[int, typer.Option(help="Batch size of both pipelines.")] = 64,
    workers: Annotated[int, typer.Option(help="DataLoader workers of the documents' pipeline.")] = 2,
) -> None:
    """Training images/s: the documents' pipeline (ImageFolder + PIL + DataLoader, fp32) vs the engine."""
    from .bench import run_bench

    rows = run_bench(data_dir, images, batch_size, workers, log=lambda m: console.print(m, highlight=False))
    table = Table("pipeline", "images/s", "x documents'")
    for name, speed, ratio in rows:
        table.add_row(name, f"{speed:.0f}", f"{ratio:.2f}")
    Console().print(table)


def main() -> None:  # pragma: no cover
    app()

"""Checks every command makes before any work, and the one place where a library error becomes a
message and an exit code: bad counts, output paths that are folders or lie under files."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.markup import escape

from studyrunner.cli.views import console
from studyrunner.errors import StudyrunnerError

__all__ = ["user_errors", "positive", "output_file", "output_folder", "check_ray"]

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn a StudyrunnerError into a clean message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StudyrunnerError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True)  # ".[ray]" stays
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def positive(option: str, value: float | None) -> None:
    """A count, budget or timeout from the command line must be > 0 (and not a boolean)."""
    if value is not None and not value > 0:
        raise StudyrunnerError(f"{option} {value:g}: must be > 0")


def output_file(option: str, path: Path | None, create: bool = False) -> None:
    """Refuse, before any work, an output file that is a folder or lies in a missing folder (or,
    with ``create``, under a file: a missing folder is then made when the file is written)."""
    if path is None:
        return
    if path.is_dir():
        raise StudyrunnerError(f"{option} {path}: is a directory; give a file path, e.g. {path / 'result.json'}")
    if create:
        output_folder(option, path.parent)
        return
    if not path.parent.is_dir():
        raise StudyrunnerError(f"{option} {path}: the directory {path.parent} does not exist; create it first")


def output_folder(option: str, path: Path | str | None) -> None:
    """Refuse, before any work, an output folder that is a file or lies under a file."""
    if path is None:
        return
    for p in (Path(path), *Path(path).parents):
        if p.exists() and not p.is_dir():
            raise StudyrunnerError(f"{option} {path}: {p} is a file, not a folder")


def check_ray(ray: str | None, jobs: int | None, gpus: str | None, cpus: float | None, gpus_per_trial: float | None) -> None:
    """Ray places the trials itself: --jobs and --gpus are refused with it, its resource flags without it."""
    from studyrunner.search.raytrials import check_resources

    if ray is None and (cpus is not None or gpus_per_trial is not None):
        raise StudyrunnerError("--cpus-per-trial and --gpus-per-trial size the Ray tasks of --ray; give --ray too")
    if ray is not None and (jobs is not None or gpus is not None):
        raise StudyrunnerError(
            "--ray places the trials itself: drop --jobs/--gpus (size its trials with --cpus-per-trial/--gpus-per-trial)"
        )
    check_resources(cpus, gpus_per_trial)

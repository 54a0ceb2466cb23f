"""What the command line prints: tables that wrap instead of truncating, the per-epoch table of
``train``, the progress bar, and the plans ``validate`` shows. Nothing here decides anything."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column, Table

__all__ = ["console", "wrapping_table", "cell", "fmt", "percent", "root_source", "progress_bar", "EpochTable", "validate_one"]

console = Console(stderr=True)  # messages and progress; tables go to stdout


def wrapping_table(*headers: str, title: str | None = None) -> Table:
    """A table whose cells wrap (folding long words) instead of ending in an ellipsis: at 80
    columns a user still reads every value."""
    return Table(*[Column(h, overflow="fold") for h in headers], title=title)


def cell(v: Any) -> str:
    """A table cell: 4 significant digits for numbers, values of several objectives joined by /."""
    if isinstance(v, list):
        return " / ".join(cell(x) for x in v)
    if v is None or v != v:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def percent(v: Any) -> str:
    """An accuracy as every command prints it: 92.41%."""
    return "-" if v is None or v != v else f"{100 * float(v):.2f}%"


def fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}" if pct else f"{v:.4f}"


class EpochTable:
    """Per-epoch rows of ``studyrunner train`` under one header, printed as they come (once)."""

    HEADERS = ("epoch", "train loss", "train acc %", "val loss", "val acc %", "lr", "s", "img/s")
    WIDTHS = (5, 10, 11, 9, 9, 9, 6, 6)

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.task = bar.add_task("epoch 1", total=None)
        self.rows = 0

    def _line(self, cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(cells, self.WIDTHS, strict=True))

    def on_epoch(self, r: Any) -> None:
        if not self.rows:
            self.bar.console.print(self._line(self.HEADERS), highlight=False, style="bold")
        row = (
            str(r.epoch),
            fmt(r.train_loss),
            fmt(r.train_acc, True),
            fmt(r.val_loss),
            fmt(r.val_acc, True),
            f"{r.lr:.2e}",
            f"{r.epoch_seconds:.1f}",
            f"{r.images_per_s:.0f}",
        )
        self.rows += 1
        self.bar.console.print(self._line(row), highlight=False)
        self.bar.update(self.task, description=f"epoch {r.epoch + 1}", completed=0)

    def on_batch(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total)


def root_source(path: str, data_dir: str | None) -> str:
    """Which setting named the data root: the --data-dir flag wins over data.path, which wins over
    $STUDYRUNNER_DATA_DIR, then the project's .data/cifar10-jpg."""
    import os

    if data_dir and path == data_dir:
        return "--data-dir"
    if path:
        return "data.path"
    return "$STUDYRUNNER_DATA_DIR" if os.environ.get("STUDYRUNNER_DATA_DIR") else "the project's .data/"


def validate_one(sweep: Path, overrides: dict[str, Any], data_dir: str | None) -> None:
    """Check one sweep or narrative file and print its plan (``overrides``: --set, with --data-dir as data.path)."""
    from studyrunner.engine.data import check_data, check_objective_split
    from studyrunner.engine.resolve import resolve_config
    from studyrunner.narrative.spec import is_narrative
    from studyrunner.search.spec import load_sweep

    if is_narrative(sweep):
        _validate_narrative(sweep, overrides, data_dir)
        return
    spec = load_sweep(sweep)
    base = resolve_config(spec.base_config(overrides))
    plan = check_data(base.data)  # layout, classes and split sizes, from the file listing alone
    root = plan.root
    check_objective_split(spec.objective.metric, base.data, None)
    table = wrapping_table(
        "parameter",
        "kind",
        "range / choices",
        "when",
        title=f"{spec.study}: {spec.objective.resolved_direction} "
        f"{spec.objective.metric}, {spec.budget.n_trials} trials, sampler {spec.sampler.name}, pruner {spec.pruner.name}",
    )
    for key, p in spec.space.items():
        whole = p.kind(base, key) == "int"  # an int key's range prints as ints
        low, high, step = ((int(v) if whole and v is not None else v) for v in (p.low, p.high, p.step))
        rng = (
            str(p.choices)
            if p.choices is not None
            else f"{low} .. {high}" + (" log" if p.log else "") + (f" step {step}" if step else "")
        )
        table.add_row(key, p.kind(base, key), rng, str(p.when or ""))
    Console().print(table)
    console.print(plan.describe(), highlight=False, soft_wrap=True)
    for note in plan.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    s = spec.sampler
    shape = (
        f"population {s.population} x {math.ceil(base.epochs / s.interval)} segments of {s.interval} epochs "
        f"({s.population * base.epochs} epochs)"
        if s.name == "pbt"
        else f"{base.epochs} epochs per trial, repeats {spec.repeats}"
    )
    console.print(
        f"ok: {sweep} is valid; data root {root} (from {root_source(base.data.path, data_dir)}); {shape}", highlight=False
    )


def _validate_narrative(path: Path, overrides: dict[str, Any], data_dir: str | None) -> None:
    """Print every step's resolved settings at every scale (each step config is already checked by loading)."""
    from studyrunner.engine.data import resolve_root
    from studyrunner.engine.resolve import resolve_config
    from studyrunner.narrative.spec import load_narrative

    story = load_narrative(path)
    scales = story.scale_names()
    for step in story.steps:  # devices and sizes the way run resolves them
        for scale in scales:
            resolve_config(story.step_config(step, scale, overrides))
    table = wrapping_table("step", "scale", "seeds", "epochs", "images", "batch", "init", "optimizer", title=story.study)
    for step in story.steps:
        rows: dict[tuple[str, ...], list[str]] = {}  # identical settings at several scales: one row
        for scale in scales:
            cfg = story.step_config(step, scale, overrides)
            optim = f"{cfg.optim.name} {cfg.optim.lr:g}"
            optim += f", backbone x{cfg.optim.backbone_lr_mult:g}" if cfg.optim.backbone_lr_mult != 1 else ""
            optim += f", {cfg.sched.name}" if cfg.sched.name != "none" else ""
            init = cfg.model.init.replace(f"study:{story.study}.{scale}.", "step:")  # the step_study prefix
            init += ", frozen" if cfg.model.freeze == "backbone" else ""
            images = str(cfg.data.train_subset or "all")
            cells = (str(step.repeats or story.repeats), str(cfg.epochs), images, str(cfg.batch_size), init, optim)
            rows.setdefault(cells, []).append(scale)
        for same, at in rows.items():
            table.add_row(step.name, ", ".join(at), *same)
    Console().print(table)
    root = resolve_root(story.step_config(story.steps[0], scales[0], overrides).data)
    console.print(
        f"ok: {path} is a valid narrative study; {len(story.steps)} steps, {len(story.claims)} claims, "
        f"scales {', '.join(scales)}; data root {root}",
        highlight=False,
    )

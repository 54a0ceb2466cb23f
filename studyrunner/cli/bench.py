"""``studyrunner bench``: the benchmarks as sub-commands (throughput, overhead, frozen, search, storage).

An option's default is the benchmark's own ``SETTINGS`` block (``studyrunner/bench/<module>.py``),
read when the command runs or shows its help and not before: a benchmark module imports torch,
which ``studyrunner --help`` and the other commands never load.

The flag form of the last release (``studyrunner bench --frozen``, ``--trial-overhead``,
``--search SWEEP``) still runs, after one line on stderr naming the sub-command that replaces it;
``studyrunner bench`` alone runs ``throughput``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from studyrunner.cli.guards import output_folder, positive, user_errors
from studyrunner.cli.views import console, wrapping_table
from studyrunner.errors import StudyrunnerError

__all__ = ["bench_app"]

HELP = (
    "Benchmarks: training throughput, per-trial overhead, frozen-backbone heads, search strategies, "
    "study storage under many workers. "
    "`studyrunner bench` alone runs throughput."
)
SHORT_HELP = "Benchmarks: throughput, per-trial overhead, frozen heads, search strategies, storage."
bench_app = typer.Typer(
    help=HELP, short_help=SHORT_HELP, invoke_without_command=True, add_completion=False, pretty_exceptions_enable=False
)


def _log(message: str) -> None:
    console.print(message, highlight=False)


def _on_machine() -> None:
    from studyrunner.track.machine import machine

    _log(f"on {machine()}")


def _figures(figures: dict[str, float]) -> None:
    out = wrapping_table("figure", "value")
    for key, val in figures.items():
        out.add_row(key, f"{100 * val:.2f}%" if key.startswith(("share", "best_val")) or "_share_" in key else f"{val:.3f}")
    Console().print(out)


class _Setting:
    """A default read from ``studyrunner.bench.<module>.SETTINGS[key]`` when it is needed: click
    calls a callable default when the option is not given, and --help shows ``str()`` of one
    that is not a plain function."""

    def __init__(self, module: str, key: str) -> None:
        self.module, self.key = module, key

    def __call__(self) -> Any:
        return importlib.import_module(f"studyrunner.bench.{self.module}").SETTINGS[self.key]

    def __str__(self) -> str:
        return str(self())


def _default(module: str, key: str, text: str) -> Any:
    return typer.Option(default_factory=_Setting(module, key), help=text)


DataDirOpt = Annotated[
    str | None,
    typer.Option("--data-dir", help="Data root (else data.path or $STUDYRUNNER_DATA_DIR).", envvar="STUDYRUNNER_DATA_DIR"),
]
ImagesOpt = Annotated[int, _default("throughput", "images", "Training images timed per pipeline.")]
BatchOpt = Annotated[int, _default("throughput", "batch_size", "Batch size of both pipelines.")]
WorkersOpt = Annotated[int, _default("throughput", "workers", "DataLoader workers of the documents' pipeline.")]
EpochsOpt = Annotated[int, _default("frozen", "epochs", "Epochs per trial.")]
SeedsOpt = Annotated[int, _default("search_report", "seeds", "Sampler seeds per strategy.")]
OutOpt = Annotated[Path, _default("search_report", "out", "Report folder (README.md, anytime.png, table.json).")]


@bench_app.command()
@user_errors
def throughput(images: ImagesOpt, batch_size: BatchOpt, workers: WorkersOpt, data_dir: DataDirOpt = None) -> None:
    """Training images/s: the documents' pipeline (ImageFolder + PIL + DataLoader, fp32) vs the engine."""
    from studyrunner.bench.throughput import run_bench

    positive("--images", images)
    positive("--batch-size", batch_size)
    _on_machine()
    table = wrapping_table("pipeline", "images/s", "x documents'")
    for name, speed, ratio in run_bench(data_dir, images, batch_size, workers, log=_log):
        table.add_row(name, f"{speed:.0f}", f"{ratio:.2f}")
    Console().print(table)


@bench_app.command()
@user_errors
def overhead(
    data_dir: DataDirOpt = None,
    server: Annotated[bool, typer.Option("--server", help="Track to a local mlflow server --serve-artifacts.")] = False,
) -> None:
    """Per-trial time of a tracked study (SQLite Optuna + SQLite MLflow, or --server) spent outside training."""
    from studyrunner.bench.overhead import trial_overhead

    _on_machine()
    _figures(trial_overhead(data_dir, log=_log, server=server))


@bench_app.command()
@user_errors
def versus(
    trials: Annotated[int, _default("versus", "n_trials", "Trials per study.")],
    epochs: Annotated[int, _default("versus", "epochs", "Epochs per trial.")],
    data_dir: DataDirOpt = None,
) -> None:
    """The main job (cifar_lr space) as Optuna's PyTorch example would run it, then as studyrunner runs it: the ratio."""
    from studyrunner.bench.versus import run_versus

    positive("--trials", trials)
    positive("--epochs", epochs)
    _on_machine()
    _figures(run_versus(data_dir, log=_log, n_trials=trials, epochs=epochs))


@bench_app.command()
@user_errors
def frozen(epochs: EpochsOpt, data_dir: DataDirOpt = None) -> None:
    """Seconds per frozen-backbone head trial (EfficientNet-Lite0, 224 px) with and without the feature cache."""
    from studyrunner.bench.frozen import frozen_head

    positive("--epochs", epochs)
    _on_machine()
    _figures(frozen_head(data_dir, epochs=epochs, log=_log))


@bench_app.command()
@user_errors
def search(
    sweep: Annotated[Path, typer.Argument(help="Sweep YAML whose space the strategies search (e.g. sweeps/search_bench.yaml).")],
    seeds: SeedsOpt,
    out: OutOpt,
    data_dir: DataDirOpt = None,
) -> None:
    """Time-to-quality of search strategies on the sweep's space: every configuration trained once
    (a resumable table), then samplers x pruners x stopping rules replayed over several seeds."""
    from studyrunner.bench.search_report import run_search_bench

    positive("--seeds", seeds)
    output_folder("--out", out)
    _on_machine()
    _figures(run_search_bench(sweep, {}, data_dir, out, seeds=seeds, log=_log))


@bench_app.command()
@user_errors
def storage(
    url: Annotated[str, typer.Argument(help="PostgreSQL URL of a database for the benchmark (it adds one study per run).")],
    workers: Annotated[str, _default("storage", "workers", "Simulated workers per run, comma-separated.")],
    processes: Annotated[int, _default("storage", "processes", "Spawned processes the worker threads are spread over.")],
    seed_trials: Annotated[int, _default("storage", "seed_trials", "Finished trials in each run's study before it starts.")],
    duration_s: Annotated[float, _default("storage", "duration_s", "Measured seconds per mode and worker count.")],
    cycles: Annotated[int | None, typer.Option(help="Cycles per worker instead of a duration (ask, 10 reports, tell).")] = None,
) -> None:
    """Many workers on one study: straight on PostgreSQL against through the gRPC storage proxy
    (started here): cycles/s, ask latency, errors and the server's peak connections."""
    from studyrunner.bench.storage import parse_workers, storage_bench, storage_ratios

    counts = parse_workers(workers)
    for flag, value in (("--processes", processes), ("--duration-s", duration_s), ("--cycles", cycles)):
        positive(flag, value)
    if seed_trials < 0:
        raise StudyrunnerError(f"--seed-trials {seed_trials}: must be >= 0")
    rows = storage_bench(url, counts, processes, seed_trials, duration_s, cycles or 0, log=_log)
    for line in storage_ratios(rows):
        _log(line)
    _on_machine()


def _refuse_options_before(ctx: typer.Context, sub: str) -> None:
    """``studyrunner bench --data-dir D frozen`` would run frozen without D: refuse it, naming where options go."""
    given = [p.opts[0] for p in ctx.command.params if p.name and _source(ctx, p.name) == "COMMANDLINE"]
    if given:
        raise StudyrunnerError(
            f"{', '.join(given)} before the sub-command: give options after it: studyrunner bench {sub} {given[0]} ..."
        )


def _source(ctx: typer.Context, name: str) -> str:
    """Where an option's value came from (COMMANDLINE, ENVIRONMENT, DEFAULT, ...)."""
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else ""


def _flags(**values: object) -> list[str]:
    """The command-line form of the options given (None: not given)."""
    return [arg for key, v in values.items() if v is not None for arg in (f"--{key.replace('_', '-')}", str(v))]


def _hidden(*decls: str) -> Any:
    return typer.Option(*decls, hidden=True)  # the last release's flags: they run, --help no longer offers them


@bench_app.callback()
@user_errors
def bench(
    ctx: typer.Context,
    data_dir: Annotated[str | None, _hidden("--data-dir")] = None,
    images: Annotated[int | None, _hidden("--images")] = None,
    batch_size: Annotated[int | None, _hidden("--batch-size")] = None,
    workers: Annotated[int | None, _hidden("--workers")] = None,
    overhead_flag: Annotated[bool, _hidden("--trial-overhead")] = False,
    frozen_flag: Annotated[bool, _hidden("--frozen")] = False,
    epochs: Annotated[int | None, _hidden("--epochs")] = None,
    search_sweep: Annotated[Path | None, _hidden("--search")] = None,
    seeds: Annotated[int | None, _hidden("--seeds")] = None,
    out: Annotated[Path | None, _hidden("--out")] = None,
) -> None:
    """With no sub-command: the last release's flag form, run as the sub-command that replaced it."""
    if ctx.invoked_subcommand is not None:
        _refuse_options_before(ctx, ctx.invoked_subcommand)
        return
    if search_sweep is not None:
        name, argv, old = "search", [str(search_sweep), *_flags(seeds=seeds, out=out)], "--search SWEEP"
    elif frozen_flag:
        name, argv, old = "frozen", _flags(epochs=epochs), "--frozen"
    elif overhead_flag:
        name, argv, old = "overhead", [], "--trial-overhead"
    else:
        name, argv, old = "throughput", _flags(images=images, batch_size=batch_size, workers=workers), ""
    if old:
        new = "search SWEEP" if name == "search" else name
        console.print(f"`studyrunner bench {old}` is deprecated; use `studyrunner bench {new}`", highlight=False, markup=False)
    assert isinstance(ctx.command, TyperGroup)
    command = ctx.command.get_command(ctx, name)
    assert command is not None
    with command.make_context(
        name, [*argv, *_flags(data_dir=data_dir)], parent=ctx
    ) as sub:  # as if typed after it: its checks and defaults apply
        command.invoke(sub)

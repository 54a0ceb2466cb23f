"""The ``studyrunner`` command line: each command a few lines over a library function.

Library errors (``StudyrunnerError``) become a one-paragraph message and exit code 1 here, in
one place; nothing else is caught.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from studyrunner.cli.bench import bench_app
from studyrunner.cli.exports import BEST_FORMATS, BEST_SUFFIX, export_best_model, require_model_format
from studyrunner.cli.guards import check_ray, output_file, output_folder, positive, user_errors
from studyrunner.cli.predict import REGISTER_HELP, predict, register
from studyrunner.cli.predict import SHORT_HELP as PREDICT_HELP
from studyrunner.cli.proxy import PROXY_HELP, storage_proxy
from studyrunner.cli.views import EpochTable, cell, console, fmt, percent, progress_bar, validate_one, wrapping_table
from studyrunner.errors import StudyrunnerError, Terminated, note_signal

app = typer.Typer(
    name="studyrunner",
    help="Declarative hyperparameter studies for PyTorch image classifiers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
F = TypeVar("F", bound=Callable[..., Any])

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config key, e.g. --set optim.lr=5e-4 (repeatable)."),
]
DataDirOpt = Annotated[
    str | None,
    typer.Option("--data-dir", help="Data root; wins over data.path (else data.path, else $STUDYRUNNER_DATA_DIR)."),
]


def _overrides(set_: list[str] | None, data_dir: str | None) -> dict[str, Any]:
    """The --set values, with --data-dir as data.path: a flag typed on the command line wins over the
    file's data.path, while $STUDYRUNNER_DATA_DIR only fills in where data.path is empty."""
    from studyrunner.config import parse_assignments

    overrides: dict[str, Any] = dict(parse_assignments(set_ or []))
    if data_dir:
        overrides["data.path"] = data_dir
    return overrides


def _read_storage(storage: str | None) -> str:
    """The Optuna storage of a command that only reads it (ls, show, export, report): it must exist."""
    from studyrunner.stores import check_storage, resolve_storage

    url = resolve_storage(storage)
    check_storage(url, must_exist=True)
    return url


@app.command(short_help="Train one configuration and print a per-epoch table.")
@user_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML of config keys (or a sweep file: its train: part).")] = None,
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result (history, test metrics) here.")] = None,
    out: Annotated[str | None, typer.Option(help="Checkpoint folder (best.pt, last.pt); default runs/train/<time>.")] = None,
) -> None:
    """Train one configuration and print a per-epoch table."""
    from studyrunner.config import config_to_dict
    from studyrunner.engine.checkpoint import state_path
    from studyrunner.engine.data import load_splits
    from studyrunner.engine.fit import fit
    from studyrunner.search.spec import load_train_config
    from studyrunner.search.trialconfig import trial_config
    from studyrunner.stores import resolve_storage

    output_file("--json", json_path, create=True)
    output_folder("--out", out)
    overrides = _overrides(set_, data_dir)
    overrides.setdefault("out_dir", out or f"runs/train/{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = trial_config(load_train_config(config, overrides), storage=resolve_storage(None))  # as a trial's, resolved once
    with progress_bar() as bar:
        task = bar.add_task("loading data", total=None)
        splits = load_splits(cfg.data, None, lambda what, done, n: bar.update(task, description=what, completed=done, total=n))
        bar.remove_task(task)
        for note in splits.notes:  # skipped, nested or too-small data: said before training, not after
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
        console.print(
            f"train {len(splits.train)}  val {len(splits.val or [])}  test {len(splits.test or [])}  "
            f"classes {len(splits.classes)}  model {cfg.model.name}"
        )
        epochs = EpochTable(bar)
        result = fit(cfg, splits, epochs.on_epoch, epochs.on_batch)
    saved = state_path(cfg)
    if saved is not None:  # the run is over: nothing to resume
        saved.unlink(missing_ok=True)
    for note in result.notes:
        console.print(note, highlight=False)
    test = f"test acc {fmt(result.test_acc, True)}%  test loss {fmt(result.test_loss)}" if result.test_acc is not None else ""
    console.print(
        f"{result.outcome}{': ' + result.reason if result.reason else ''}  best epoch {result.best_epoch}  "
        f"{test}  [{result.device}, {result.precision}]  checkpoints in {cfg.out_dir}",
        highlight=False,
    )
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({**result.to_dict(), "config": config_to_dict(cfg)}, indent=2))


StorageOpt = Annotated[
    str | None, typer.Option("--storage", help="Optuna storage URL (default sqlite:///runs/optuna.db or $STUDYRUNNER_STORAGE).")
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri", help="MLflow tracking URI (default sqlite:///runs/mlflow.db or $MLFLOW_TRACKING_URI); none = off."
    ),
]


@app.command(short_help="Check sweep or narrative files and their data without training; print each plan.")
def validate(
    sweeps: Annotated[list[Path], typer.Argument(help="Sweep or narrative study YAML files (several: each checked).")],
    set_: SetOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Check sweep or narrative study files (keys, ranges, conditions, data path) without training;
    print each one's plan. Every file is checked; the exit code is 1 if any is invalid."""
    failed = []
    for sweep in sweeps:
        try:
            validate_one(sweep, _overrides(set_, data_dir), data_dir)
        except StudyrunnerError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
            failed.append(str(sweep))
    if len(sweeps) > 1:
        bad = f"; invalid: {', '.join(failed)}" if failed else ""
        console.print(f"{len(sweeps) - len(failed)} of {len(sweeps)} valid{bad}")
    if failed:
        raise typer.Exit(1)


RayOpt = Annotated[
    str | None,
    typer.Option("--ray", help="Run the trials as Ray tasks: local (a Ray instance here), auto or HOST:PORT of a cluster."),
]
CpusPerTrialOpt = Annotated[float | None, typer.Option("--cpus-per-trial", help="With --ray: CPUs per trial (resources.cpus).")]
GpusPerTrialOpt = Annotated[float | None, typer.Option("--gpus-per-trial", help="With --ray: GPUs per trial, e.g. 0.25.")]


@app.command(short_help="Run or resume a sweep's study (or a narrative study's steps), tracked in MLflow.")
@user_errors
def run(
    sweep: Annotated[Path, typer.Argument(help="Sweep YAML (sweeps/) or narrative study YAML (studies/).")],
    n_trials: Annotated[int | None, typer.Option("--n-trials", help="Finished trials the study should hold in total.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop starting new trials after this many seconds.")] = None,
    scale: Annotated[str, typer.Option(help="Narrative studies: full (the document's scale) or reduced (CPU).")] = "reduced",
    step: Annotated[
        list[str] | None, typer.Option("--step", help="Narrative studies: run only this step (repeatable); the rest are left.")
    ] = None,
    jobs: Annotated[
        int | None, typer.Option("--jobs", "-j", min=1, help="Local worker processes (default 1; with --gpus, GPUs x K).")
    ] = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="Pin the workers to these CUDA GPUs, round-robin, e.g. 0,1.")] = None,
    trials_per_gpu: Annotated[int, typer.Option("--trials-per-gpu", min=1, help="With --gpus: workers sharing one GPU (K).")] = 1,
    set_: SetOpt = None,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    data_dir: DataDirOpt = None,
    ray: RayOpt = None,
    cpus_per_trial: CpusPerTrialOpt = None,
    gpus_per_trial: GpusPerTrialOpt = None,
) -> None:
    """Run (or resume) a sweep's Optuna study, or every step of a narrative study; every trial is
    a nested MLflow run. Every process started on the same --storage is a worker of the study."""

    positive("--n-trials", n_trials)
    positive("--timeout", timeout)
    check_ray(ray, jobs, gpus, cpus_per_trial, gpus_per_trial)
    if trials_per_gpu > 1 and gpus is None:
        raise StudyrunnerError(f"--trials-per-gpu {trials_per_gpu}: needs --gpus (it says how many workers share one GPU)")
    if step and (gpus is not None or (jobs or 1) > 1):
        raise StudyrunnerError("--step: runs in this process; leave out --jobs and --gpus")
    if gpus is not None or (jobs or 1) > 1:
        from studyrunner.cli.workers import run_workers

        args = (sweep, jobs, n_trials, timeout, scale, set_ or [], storage, tracking_uri, data_dir, console)
        raise typer.Exit(run_workers(*args, gpus=gpus, trials_per_gpu=trials_per_gpu))
    from studyrunner.cli.live import LiveStudy
    from studyrunner.narrative.spec import is_narrative
    from studyrunner.search.driver import RunOptions, run_study
    from studyrunner.search.spec import load_sweep

    opts = RunOptions(n_trials, timeout, _overrides(set_, data_dir), storage, tracking_uri)
    opts.ray, opts.cpus_per_trial, opts.gpus_per_trial = ray, cpus_per_trial, gpus_per_trial
    if is_narrative(sweep):
        _run_narrative(sweep, scale, step or [], opts)
        return
    if step:
        raise StudyrunnerError(f"--step: {sweep} is a sweep, not a narrative study with steps")
    spec = load_sweep(sweep)
    with _interruptible(), LiveStudy(console, spec) as live:
        outcome = run_study(spec, opts, live)
    live.summary(outcome)
    _fail_if_nothing_finished([outcome])


def _run_narrative(path: Path, scale: str, steps: list[str], opts: Any) -> None:
    """Every step of a narrative study (or the ``steps`` named), each a study of its own."""
    from studyrunner.cli.live import LiveStudy
    from studyrunner.narrative.runner import run_narrative
    from studyrunner.narrative.spec import load_narrative

    story = load_narrative(path)
    story.check(scale, opts.overrides)  # a bad scale or --set value is refused before any store opens
    first = story.step(steps[0]) if steps else story.steps[0]  # a step name that is not there: the steps it has
    with _interruptible(), LiveStudy(console, story.step_sweep(first, scale)) as live:
        say = live.progress.console.print
        outcomes = run_narrative(story, scale, opts, live, announce=lambda m: say(m), only=steps)
    for outcome in outcomes:
        live.summary(outcome)
    _fail_if_nothing_finished(outcomes)


def _fail_if_nothing_finished(outcomes: list[Any]) -> None:
    """Exit 1 when a study's trials all failed (or failures stopped it): the run did not work."""
    for outcome in outcomes:
        if outcome.failed:
            console.print(f"error: study {outcome.study.study_name}: {outcome.failed}", highlight=False)
            raise typer.Exit(1)


def _raise_terminated(signum: int, frame: object) -> None:
    note_signal(signum)
    raise Terminated()


def _raise_interrupted(signum: int, frame: object) -> None:
    note_signal(signum)
    raise KeyboardInterrupt()


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C (exit 130) and SIGTERM (exit 143) end the current trial INTERRUPTED, its MLflow run
    and the study's parent run KILLED, and leave the study to resume; one line says so."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_int = signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        yield
    except KeyboardInterrupt as exc:
        what, code = ("terminated (SIGTERM)", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        console.print(f"{what}: the current trial is marked INTERRUPTED and its MLflow run KILLED; run again to resume")
        raise typer.Exit(code) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


@app.command("ls", short_help="List studies: trials by state, the best value and parameters.")
@user_errors
def ls(storage: StorageOpt = None) -> None:
    """List studies: trials by state and the best value and parameters."""
    from studyrunner.report.results import list_studies

    table = wrapping_table("study", "direction", "trials by state", "best value", "best parameters")
    for row in list_studies(_read_storage(storage)):
        counts = ", ".join(f"{k.value} {v}" for k, v in sorted(row.counts.items()))
        best = "-" if row.best_value is None else f"{row.best_value:.4f}"
        best += f" (front: {row.front} trials)" if row.front else ""
        table.add_row(row.name, row.direction, counts, best, ", ".join(f"{k}={v}" for k, v in row.best_params.items()))
    Console().print(table)


@app.command(short_help="A study's trials: state, value, test accuracy, epochs, time, parameters.")
@user_errors
def show(study: Annotated[str, typer.Argument(help="Study name.")], storage: StorageOpt = None) -> None:
    """The study's trials: state, value, parameters, test accuracy, epochs, duration."""
    from studyrunner.report.results import load_study, pareto_front, trial_rows
    from studyrunner.search.best import best_trial
    from studyrunner.states import TrialRecord

    loaded = load_study(study, _read_storage(storage))
    rows = trial_rows(loaded)
    value = "values" if any(r["values"] is not None for r in rows) else "value"  # multi-objective: all of them
    params = sorted({k for r in rows for k in r if k.startswith("param.")})
    cols = ["number", "state", value, "test_acc", "epochs", "duration_s", *params]
    table = wrapping_table("trial", "state", value, "test acc", "epochs", "secs", *(c.removeprefix("param.") for c in params))
    for r in rows:
        table.add_row(*[percent(r.get(c)) if c == "test_acc" else cell(r.get(c)) for c in cols])
    Console().print(table)
    best = best_trial(loaded)
    if best is not None:
        where = TrialRecord.of(best.user_attrs).checkpoint or "none recorded"
        Console().print(f"best trial {best.number}: checkpoint {where}", highlight=False, soft_wrap=True)
    front = pareto_front(loaded)
    if front:  # multi-objective: the trials no other trial beats on every objective
        names = [o["metric"] for o in loaded.user_attrs.get("sweep", {}).get("objectives", [])]
        Console().print(f"Pareto front ({', '.join(names)}):", highlight=False)
        for t in sorted(front, key=lambda t: t.values[0]):
            values = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, t.values, strict=False))
            Console().print(f"  trial {t.number}: {values}  {t.params}", highlight=False, soft_wrap=True)
    for r in rows:  # why trials were pruned, diverged or failed, one line each
        if r["reason"]:
            Console().print(f"trial {r['number']} {r['state']}: {r['reason']}", highlight=False, soft_wrap=True)


@app.command(short_help="Trials to CSV or Parquet; --best: the best trial's config (YAML) or model (ONNX, TorchScript).")
@user_errors
def export(
    study: Annotated[str, typer.Argument(help="Study name.")],
    fmt: Annotated[str, typer.Option("--format", help="csv, parquet (all trials); yaml, onnx, torchscript (--best).")] = "csv",
    best: Annotated[bool, typer.Option("--best", help="The best trial: its config as YAML for `train`, or its model.")] = False,
    out: Annotated[Path | None, typer.Option(help="Default runs/exports/STUDY.csv, or STUDY-best.yaml|.onnx|.ts.pt.")] = None,
    storage: StorageOpt = None,
) -> None:
    """Write the trials joined with their final metrics to CSV or Parquet, or (--best) the best
    trial's configuration as YAML that `studyrunner train FILE` runs again, or its model as ONNX or
    TorchScript that runs without studyrunner (plain [0, 1] pixels in, logits out)."""
    from studyrunner.report.results import load_study

    allowed = BEST_FORMATS if best else ("csv", "parquet")
    fmt = "yaml" if best and fmt == "csv" else fmt  # --best alone means yaml
    if fmt not in allowed:
        raise StudyrunnerError(f"--format {fmt!r}: allowed {'with --best' if best else 'without --best'}: {', '.join(allowed)}")
    path = out or Path("runs/exports") / (f"{study}-best{BEST_SUFFIX[fmt]}" if best else f"{study}.{fmt}")
    if out is not None:
        output_file("--out", path)
    if best and fmt != "yaml":
        require_model_format(fmt)  # a missing extra is said before any work
    url = _read_storage(storage)
    loaded = load_study(study, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    if best and fmt != "yaml":
        export_best_model(loaded, url, fmt, path)
        return
    if best:
        _export_best(loaded, path)
        return
    from studyrunner.report.results import trials_frame

    df = trials_frame(loaded)
    df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)
    console.print(f"wrote {len(df)} trials to {path}")


def _export_best(study: Any, path: Path) -> None:
    import yaml

    from studyrunner.report.results import best_config

    found = best_config(study)
    checkpoint = found["checkpoint"] or "none recorded"
    header = (
        f"# study {study.study_name}: trial {found['trial']}, value {found['value']:.4f}\n"
        f"# its best checkpoint: {checkpoint}\n"
        f"# train it again:  studyrunner train {path}\n"
    )
    path.write_text(header + yaml.safe_dump(found["config"], sort_keys=False))
    console.print(f"wrote the config of trial {found['trial']} (value {found['value']:.4f}) to {path}", highlight=False)
    console.print(f"its best checkpoint: {checkpoint}\ntrain it again: studyrunner train {path}", highlight=False)


@app.command(short_help="A markdown report with plots; a narrative study's figures beside the document's.")
@user_errors
def report(
    targets: Annotated[list[str], typer.Argument(help="A narrative study file, or sweep files / study names to compare.")],
    scale: Annotated[str, typer.Option(help="Narrative studies: the scale whose runs to report.")] = "reduced",
    out: Annotated[Path | None, typer.Option(help="Output folder (default reports/<study>).")] = None,
    gallery: Annotated[bool, typer.Option(help="A grid of validation predictions per study (per step of a narrative).")] = False,
    storage: StorageOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Write a markdown report (README.md + PNG plots): summaries, leaderboards, parameter effects and
    importances; for a narrative study, the document's figures beside ours and a verdict per claim."""
    from studyrunner.narrative.spec import is_narrative, load_narrative
    from studyrunner.report.markdown import render_sweep_report, write
    from studyrunner.report.narrative_md import render_narrative
    from studyrunner.report.results import narrative_result

    output_folder("--out", out)
    url = _read_storage(storage)
    store = f" --storage {storage}" if storage else ""

    def grid(checkpoint: str, png: Path) -> bool:
        if not Path(checkpoint).is_file():
            return False
        from studyrunner.report.gallery import prediction_grid

        prediction_grid(checkpoint, png, data_dir=data_dir)
        return True

    if len(targets) == 1 and Path(targets[0]).is_file() and is_narrative(targets[0]):
        story = load_narrative(targets[0])
        folder = out or Path("reports") / story.study
        folder.mkdir(parents=True, exist_ok=True)
        flags = (" --gallery" if gallery else "") + (f" --out {out}" if out else "")
        data = story.data_command or (
            "export STUDYRUNNER_DATA_DIR=/path/to/cifar10-jpg   # train/<class>/*.jpg and test/<class>/*.jpg"
        )
        command = (
            f"{data}\n"
            f"studyrunner run {targets[0]} --scale {scale}{store}\n"
            f"studyrunner report {targets[0]} --scale {scale}{store}{flags}"
        )

        result = narrative_result(story, scale, url)
        path = write(render_narrative(result, folder, command, grid if gallery else None), folder)
    else:
        names, results = _study_results(targets, url)
        folder = out or Path("reports") / (names[0] if len(names) == 1 else "comparison")
        folder.mkdir(parents=True, exist_ok=True)
        flags = (" --gallery" if gallery else "") + (f" --out {out}" if out else "")
        command = f"studyrunner report {' '.join(targets)}{store}{flags}"
        path = write(render_sweep_report(results, folder, command, grid if gallery else None), folder)
    console.print(f"wrote {path} and its plots")


def _study_results(targets: Sequence[str], url: str) -> tuple[list[str], list[Any]]:
    """Study names (a sweep file stands for its study) and each study's results."""
    from studyrunner.report.results import load_study, study_result
    from studyrunner.search.spec import load_sweep

    names = [load_sweep(t).study if Path(t).is_file() else t for t in targets]
    return names, [study_result(load_study(n, url)) for n in names]


@app.command(short_help="Which sweep found better configurations per epoch and per second spent.")
@user_errors
def compare(
    studies: Annotated[list[str], typer.Argument(help="Two or more study names (or their sweep files).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default reports/compare-A-B).")] = None,
    storage: StorageOpt = None,
) -> None:
    """Which sweep found better configurations per epoch spent: one figure of the best value against
    epochs trained (pruned trials included), one row per study, then each study's report."""
    from studyrunner.report.markdown import render_sweep_report, spend_table, write

    if len(studies) < 2:
        raise StudyrunnerError(f"compare needs two or more studies, got {len(studies)}; `studyrunner report` shows one")
    output_folder("--out", out)
    url = _read_storage(storage)
    names, results = _study_results(studies, url)
    if len({r.direction for r in results}) > 1 or len({r.metric for r in results}) > 1:
        found = ", ".join(f"{r.name}: {r.direction} {r.metric}" for r in results)
        raise StudyrunnerError(f"compare needs studies of one objective and direction; found {found}")
    folder = out or Path("reports") / ("compare-" + "-".join(names))[:120]
    folder.mkdir(parents=True, exist_ok=True)
    store = f" --storage {storage}" if storage else ""
    command = f"studyrunner compare {' '.join(studies)}{store}" + (f" --out {out}" if out else "")
    path = write(render_sweep_report(results, folder, command), folder)
    headers, rows, _ = spend_table(results)
    table = wrapping_table(*headers)
    for row in rows:
        table.add_row(*[cell(v) for v in row])
    Console().print(table)
    console.print(f"wrote {path} and best_per_epoch.png, best_per_second.png beside it")


@app.command(short_help="The MLflow UI (and with --dashboard optuna-dashboard) on the study's stores.")
@user_errors
def ui(
    tracking_uri: TrackingOpt = None,
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    dashboard: Annotated[bool, typer.Option("--dashboard", help="Also serve optuna-dashboard on the Optuna storage.")] = False,
    storage: StorageOpt = None,
    dashboard_port: Annotated[int, typer.Option(help="Port of optuna-dashboard.")] = 8080,
    host: Annotated[str, typer.Option(help="Address both bind to; 0.0.0.0 opens them to the network.")] = "127.0.0.1",
    study: Annotated[str | None, typer.Option(help="The study whose runs the MLflow link opens (default: the newest).")] = None,
) -> None:
    """The MLflow UI on the tracking store (trials nested under each study's run), and with
    --dashboard optuna-dashboard on the Optuna storage; one line each says where."""
    from studyrunner.stores import check_tracking, resolve_tracking_uri
    from studyrunner.track.servers import mlflow_ui, optuna_dashboard, serve

    uri = resolve_tracking_uri(tracking_uri)
    if uri.lower() == "none":
        raise StudyrunnerError("--tracking-uri none: the MLflow UI needs a tracking store")
    check_tracking(uri)
    servers = [mlflow_ui(uri, host, port, study)]
    if dashboard:
        servers.append(optuna_dashboard(_read_storage(storage), host, dashboard_port))
    code = serve(servers, lambda line: print(line, flush=True))
    raise typer.Exit(code)


# commands defined in their own modules, listed after the ones above in --help
app.command("predict", short_help=PREDICT_HELP)(predict)
app.command("register", short_help=REGISTER_HELP)(register)
app.command("storage-proxy", short_help=PROXY_HELP)(storage_proxy)
app.add_typer(bench_app, name="bench")

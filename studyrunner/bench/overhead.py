"""Per-trial overhead: what a trial of a tracked study (SQLite Optuna + SQLite MLflow, or a local
``mlflow server --serve-artifacts``) costs beyond its training: ask/tell, model build, the MLflow
run with its params, metrics and artifacts, the uploads of its checkpoints and resume state, the
learning-curve PNG, the parent run's update.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from studyrunner.engine.data import load_splits
from studyrunner.engine.resolve import resolve_config

if TYPE_CHECKING:
    from studyrunner.search.spec import SweepSpec

__all__ = ["trial_overhead"]

SETTINGS = {
    # the overhead is per trial and per epoch, not per image: small trials keep training from
    # drowning it, a few trials average it, and the run takes about a minute
    "trials": 5,  # trials of the study
    "epochs": 3,  # epochs per trial: more than one, so per-epoch logging separates from per-trial costs
    "subset": 2000,  # training images per trial
}


def trial_overhead(
    data_dir: str | None,
    trials: int = SETTINGS["trials"],
    epochs: int = SETTINGS["epochs"],
    subset: int = SETTINGS["subset"],
    log: Callable[[str], None] = print,
    server: bool = False,
) -> dict[str, float]:
    """Per-trial time spent outside training in a tracked study (SQLite Optuna; SQLite MLflow with
    its artifact folder, or with ``server`` a local ``mlflow server --serve-artifacts``, every file
    through its HTTP artifact proxy): ask/tell, model build, MLflow runs/params/metrics, the trial's
    files (checkpoints, resume state and history each epoch), the PNG. Returns seconds and the
    share of a one-minute trial. Training, epoch-logging and upload time come from the objective's
    own timings (``StudyOutcome.timings``)."""
    from studyrunner.track.servers import artifact_server

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        load_splits(resolve_config(_spec(trials, epochs, subset).base_config()).data, data_dir)  # warm the decoded cache
        if not server:
            figures = _study(_spec(trials, epochs, subset), f"sqlite:///{root}/mlflow.db", root, data_dir, log)
            return {**figures, "uploaded_mb_per_trial": _megabytes(root / "mlartifacts") / trials}
        log("starting a local mlflow server --serve-artifacts ...")
        with artifact_server(root / "server") as url:
            figures = _study(_spec(trials, epochs, subset), url, root, data_dir, log)
        return {**figures, "uploaded_mb_per_trial": _megabytes(root / "server" / "artifacts") / trials}


def _spec(trials: int, epochs: int, subset: int) -> SweepSpec:
    from studyrunner.search.spec import SweepSpec

    return SweepSpec.model_validate(
        {
            "study": "overhead",
            "budget": {"n_trials": trials},
            "pruner": {"name": "median", "no_learning_epochs": 0},  # every trial runs all its epochs
            "train": {"epochs": epochs, "data": {"train_subset": subset}},
            "space": {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
        }
    )


def _study(spec: SweepSpec, tracking: str, root: Path, data_dir: str | None, log: Callable[[str], None]) -> dict[str, float]:
    from studyrunner.search.driver import RunOptions, run_study
    from studyrunner.search.objective import StudyEvents

    first: list[float] = []

    class FirstTrial(StudyEvents):
        def trial_started(self, number: int, params: dict[str, object]) -> None:
            if not first:
                first.append(time.perf_counter())

    base = spec.base_config()
    trials, epochs = spec.budget.n_trials or 1, base.epochs
    opts = RunOptions(storage=f"sqlite:///{root}/optuna.db", tracking_uri=tracking, data_dir=data_dir)
    log(f"tracked study ({tracking.split(':')[0]}): {trials} trials x {epochs} epochs on {base.data.train_subset} images ...")
    t0 = time.perf_counter()
    outcome = run_study(spec, opts, FirstTrial())
    total = time.perf_counter() - t0
    timings = outcome.timings
    logging = timings["epoch_logging_s"]
    training = timings["fit_s"] - logging
    setup = first[0] - t0  # study + MLflow experiment/parent run creation, once per invocation
    per_trial = (total - setup - training) / trials
    return {
        "total_s": total,
        "setup_once_s": setup,
        "training_s": training,
        "overhead_per_trial_s": per_trial,
        "epoch_logging_per_epoch_s": logging / (trials * epochs),
        "upload_wait_per_trial_s": timings["upload_wait_s"] / trials,
        "outbox_background_per_trial_s": timings["outbox_busy_s"] / trials,
        "share_of_1min_trial": per_trial / 60.0,
        "upload_share_of_1min_trial": (timings["upload_wait_s"] + logging) / trials / 60.0,
    }


def _megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20

"""Per-trial overhead: what a trial of a tracked study (SQLite Optuna + SQLite MLflow) costs
beyond its training: ask/tell, model build, the MLflow run with its params, metrics and
artifacts, the learning-curve PNG, the parent run's update.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable

from studyrunner.engine.data import load_splits
from studyrunner.engine.resolve import resolve_config

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
) -> dict[str, float]:
    """Per-trial time spent outside training in a tracked study (SQLite Optuna + SQLite MLflow):
    ask/tell, model build, MLflow runs/params/metrics/artifacts, the PNG. Returns seconds and the
    share of a one-minute trial. Training and epoch-logging time come from the objective's own
    timings (``StudyOutcome.timings``)."""
    from studyrunner.search.driver import RunOptions, run_study
    from studyrunner.search.objective import StudyEvents
    from studyrunner.search.spec import SweepSpec

    spec = SweepSpec.model_validate(
        {
            "study": "overhead",
            "budget": {"n_trials": trials},
            "pruner": {"name": "median", "no_learning_epochs": 0},  # every trial runs all its epochs
            "train": {"epochs": epochs, "data": {"train_subset": subset}},
            "space": {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
        }
    )
    first: list[float] = []

    class FirstTrial(StudyEvents):
        def trial_started(self, number: int, params: dict[str, object]) -> None:
            if not first:
                first.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        opts = RunOptions(storage=f"sqlite:///{tmp}/optuna.db", tracking_uri=f"sqlite:///{tmp}/mlflow.db", data_dir=data_dir)
        load_splits(resolve_config(spec.base_config()).data, data_dir)  # warm the decoded-image cache: not a per-trial cost
        log(f"tracked study: {trials} trials x {epochs} epochs on {subset} images ...")
        t0 = time.perf_counter()
        outcome = run_study(spec, opts, FirstTrial())
        total = time.perf_counter() - t0
    logging = outcome.timings["epoch_logging_s"]
    training = outcome.timings["fit_s"] - logging
    setup = first[0] - t0  # study + MLflow experiment/parent run creation, once per invocation
    per_trial = (total - setup - training) / trials
    return {
        "total_s": total,
        "setup_once_s": setup,
        "training_s": training,
        "overhead_per_trial_s": per_trial,
        "epoch_logging_per_epoch_s": logging / (trials * epochs),
        "share_of_1min_trial": per_trial / 60.0,
    }

"""The whole study against what a user would write instead, in one run.

The plain study is Optuna's PyTorch example applied to the main job: torchvision ``ImageFolder`` with
PIL transforms (``ToTensor``, ``Normalize``), ``DataLoader(num_workers=2)``, the same network, the
``cifar_lr`` space (optimizer, learning rate, momentum) sampled by TPE (seed 0) and pruned by the
median pruner, each epoch's validation accuracy reported to it. studyrunner runs
``sweeps/cifar_lr.yaml`` on the same images with the same budget (trials, epochs, subsets) and its
own defaults (decoded-image cache, batched augmentation, the no-learning rule, MLflow tracking to a
SQLite file). Both studies run one after the other in this process; the ratio is of their wall times.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from studyrunner.engine.data import resolve_root
from studyrunner.engine.models import CifarAlexNet
from studyrunner.track.machine import machine

__all__ = ["SETTINGS", "run_versus", "plain_study"]

SETTINGS: dict[str, Any] = {
    "sweep": "sweeps/cifar_lr.yaml",  # the main job's space
    "n_trials": 12,
    "epochs": 8,
    "train_images": 3000,
    "val_images": 1000,
    "batch_size": 64,
    "workers": 2,  # the example's DataLoader worker processes
}

Log = Callable[[str], None]


def _folders(data_dir: str | None) -> tuple[Path, int]:
    from studyrunner.config import DataConfig

    root = resolve_root(DataConfig(dataset="cifar10"), data_dir)
    train = root / "train"
    return train, len([p for p in train.iterdir() if p.is_dir()])


def plain_study(data_dir: str | None, n_trials: int, epochs: int, train_images: int, val_images: int, log: Log) -> optuna.Study:
    """Optuna's PyTorch example on CIFAR-10 image folders, the main job's space and budget."""
    train_dir, _ = _folders(data_dir)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    ds = datasets.ImageFolder(str(train_dir), transform=tf)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    train_set, val_set = Subset(ds, order[:train_images]), Subset(ds, order[train_images : train_images + val_images])
    batch, workers = SETTINGS["batch_size"], SETTINGS["workers"]

    def objective(trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("optim.name", ["sgd", "adam", "rmsprop"])
        lr = trial.suggest_float("optim.lr", 1e-5, 1e-1, log=True)
        model = CifarAlexNet(len(ds.classes), batchnorm=False)
        if name == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        else:
            momentum = trial.suggest_float("optim.momentum", 0.0, 0.99)
            cls = torch.optim.SGD if name == "sgd" else torch.optim.RMSprop
            opt = cls(model.parameters(), lr=lr, momentum=momentum)
        train_loader = DataLoader(train_set, batch_size=batch, shuffle=True, num_workers=workers)
        val_loader = DataLoader(val_set, batch_size=1000, num_workers=workers)
        best = 0.0
        for epoch in range(1, epochs + 1):
            model.train()
            for x, y in train_loader:
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            model.eval()
            correct = 0
            with torch.no_grad():
                for x, y in val_loader:
                    correct += int((model(x).argmax(1) == y).sum())
            acc = correct / len(val_set)
            best = max(best, acc)
            trial.report(acc, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=6),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=3),
    )
    for i in range(n_trials):
        study.optimize(objective, n_trials=1, catch=(RuntimeError, ValueError))
        t = study.trials[-1]
        log(f"plain study: trial {i + 1}/{n_trials} {t.state.name} {t.value if t.value is not None else '-'}")
    return study


def _studyrunner(data_dir: str | None, n_trials: int, epochs: int, train_images: int, val_images: int, log: Log) -> Any:
    from studyrunner.search.driver import RunOptions, run_study
    from studyrunner.search.spec import load_sweep

    spec = load_sweep(SETTINGS["sweep"])
    folder = Path(tempfile.mkdtemp(prefix="studyrunner-versus-"))
    overrides = {"epochs": epochs, "data.train_subset": train_images, "data.val_subset": val_images}
    opts = RunOptions(
        n_trials=n_trials,
        overrides=overrides,
        storage=f"sqlite:///{folder / 'optuna.db'}",
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        data_dir=data_dir,
    )
    log(f"studyrunner: {spec.source}, {n_trials} trials x {epochs} epochs (stores and checkpoints in {folder})")
    before = os.environ.get("STUDYRUNNER_CHECKPOINTS")
    os.environ["STUDYRUNNER_CHECKPOINTS"] = str(folder / "checkpoints")  # not the user's cifar_lr folders
    try:
        return run_study(spec, opts).study
    finally:
        if before is None:
            os.environ.pop("STUDYRUNNER_CHECKPOINTS", None)
        else:
            os.environ["STUDYRUNNER_CHECKPOINTS"] = before


def _epochs(study: optuna.Study) -> int:
    """Epochs trained: studyrunner records them (a diverged epoch too); the plain study reports each."""
    from studyrunner.states import TrialRecord

    return sum(TrialRecord.of(t.user_attrs).epochs or len(t.intermediate_values) for t in study.trials)


def _best(study: optuna.Study) -> str:
    best = study.best_trial
    shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(best.params.items()))
    return f"{100 * best.value:.1f}% ({shown})"


def _value_of(study: optuna.Study, params: dict[str, Any]) -> float | None:
    """The best value ``study`` had for exactly ``params`` (None when it never finished them)."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    found = [t.value for t in done if t.params == params and t.value is not None]
    return max(found, default=None)


def run_versus(data_dir: str | None = None, log: Log = print, **settings: Any) -> dict[str, float]:
    """Both studies, one after the other; their wall times, epochs, best values and the ratio."""
    s = {**SETTINGS, **settings}
    args = (data_dir, s["n_trials"], s["epochs"], s["train_images"], s["val_images"], log)
    log(f"machine: {machine()}")
    start = time.perf_counter()
    plain = plain_study(*args)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = _studyrunner(*args)
    ours_s = time.perf_counter() - start
    log(f"plain Optuna example: {plain_s:.0f} s, {_epochs(plain)} epochs, best {_best(plain)}")
    log(f"studyrunner:          {ours_s:.0f} s, {_epochs(ours)} epochs, best {_best(ours)}")
    same = _value_of(plain, ours.best_trial.params)
    shown = "not trained to its end there" if same is None else f"{100 * same:.1f}%"
    log(f"studyrunner's best configuration in the plain study: {shown}")
    log(f"ratio (plain / studyrunner wall time): {plain_s / ours_s:.2f}x")
    return {
        "plain_s": plain_s,
        "studyrunner_s": ours_s,
        "ratio": plain_s / ours_s,
        "plain_epochs": float(_epochs(plain)),
        "studyrunner_epochs": float(_epochs(ours)),
        "plain_best": float(plain.best_value),
        "studyrunner_best": float(ours.best_value),
        "plain_value_of_studyrunner_best": float("nan") if same is None else float(same),
    }

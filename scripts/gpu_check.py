"""The GPU check: studyrunner's CUDA path, run once on a CUDA machine, one printed line per figure.

    make gpu-wheels                      # beforehand, on a machine that reaches the package registry
    make gpu-check                       # on the GPU machine, no network needed (under 6 minutes)
    .venv/bin/python scripts/gpu_check.py --device cpu --quick   # the script itself, on a CPU (2-3 minutes)

What it runs, in order, on the chosen device:

1. a 2-epoch smoke train (``studyrunner.engine.fit.fit``, document 004's net with BatchNorm, Adam 5e-4,
   crop and flip) on a CIFAR-10 subset, and fails unless the training loss falls;
2. ``studyrunner bench throughput``'s comparison (``run_bench``): the documents' pipeline (ImageFolder +
   PIL + DataLoader, fp32) against the engine, with each row's ratio; then the documents' pipeline
   once more with its model on the device, since the benchmark keeps that side on the CPU;
3. one full CIFAR-10 epoch (all 50,000 training images) of the same net, timed: images/s and seconds;
4. 4 short trials packed onto one GPU (4 processes training at once, as ``studyrunner run --jobs 4
   --gpus 0 --trials-per-gpu 4`` runs them) against the same 4 one after another in one process:
   both wall times and their ratio. Each process loads its data and warms up before a shared start
   signal, so the walls hold training alone; a trial's length is set from the epoch's speed (~8 s).

What it needs: only what studyrunner already installs (torch, torchvision, numpy, Pillow, studyrunner
and its dependencies) and the CIFAR-10 image folders ($STUDYRUNNER_DATA_DIR, ``make data``). The
option chosen for a machine without network: ``make gpu-wheels`` runs ``pip download -d wheels/`` of
studyrunner's runtime dependencies (not the dev extra) on a machine with the registry, and
``make gpu-check`` then installs from that folder alone (``pip install --no-index --find-links wheels
-e .``) into .venv, unless .venv is already installed there; no package beyond the project's own.

Without CUDA it refuses in one line and exits 2, unless ``--device cpu`` is asked. ``--quick``: small
subsets and one short epoch, to prove the script on a CPU. Exit 1: a check failed (its line says which).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

from studyrunner.bench.throughput import run_bench
from studyrunner.config import TrainConfig, apply_overrides
from studyrunner.engine.data import Splits, load_splits, resolve_root
from studyrunner.engine.fit import FitResult, fit
from studyrunner.engine.models import CifarAlexNet
from studyrunner.engine.resolve import resolve_config
from studyrunner.errors import StudyrunnerError
from studyrunner.track.machine import machine

# document 004's net at the narrative's BatchNorm step (studies/cifar10_tuning.yaml), with the
# augmentation `studyrunner bench throughput` uses
NET = {
    "model.name": "cifar_alexnet",
    "model.batchnorm": True,
    "optim.name": "adam",
    "optim.lr": 5e-4,
    "batch_size": 64,
    "augment.crop_padding": 4,
    "augment.flip": True,
}


@dataclass(frozen=True)
class Sizes:
    smoke_images: int  # training images of the smoke train and of every packed trial (one decoded cache)
    bench_images: int  # images timed per pipeline in the throughput comparison
    epoch_images: int  # 0 = all 50,000
    trial_seconds: float  # aimed length of one packed trial
    eval_images: int = 1000  # validation and test images of the smoke train and the trials
    trials: int = 4  # packed onto one GPU


FULL = Sizes(smoke_images=10_000, bench_images=6000, epoch_images=0, trial_seconds=8.0)
QUICK = Sizes(smoke_images=1000, bench_images=640, epoch_images=2000, trial_seconds=1.0, eval_images=500)


class CheckFailed(Exception):
    """A figure that says the CUDA path does not work (the loss did not fall, a trial did not learn)."""


def say(what: str, line: str) -> None:
    print(f"{what + ':':<12} {line}", flush=True)


def config(device: str, threads: int, **over: Any) -> TrainConfig:
    return resolve_config(apply_overrides(TrainConfig(), {**NET, "device": device, "threads": threads, **over}))


def small_data(sizes: Sizes) -> dict[str, Any]:
    """The subset the smoke train and the packed trials share: one decoded cache for both."""
    return {"data.train_subset": sizes.smoke_images, "data.val_subset": sizes.eval_images, "data.test_subset": sizes.eval_images}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def header(device: str) -> None:
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        say(
            "device",
            f"{torch.cuda.get_device_name(0)} ({p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor})",
        )
    else:
        say("device", "cpu (asked with --device cpu)")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    say(
        "versions",
        f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}, cuDNN {cudnn}, python {sys.version.split()[0]}",
    )
    say("cpu", machine())


def smoke(device: str, sizes: Sizes, data_dir: str | None) -> None:
    cfg = config(device, 0, epochs=2, **small_data(sizes))
    splits = load_splits(cfg.data, data_dir)
    result = fit(cfg, splits)
    losses = [r.train_loss for r in result.history]
    falls = len(losses) == 2 and losses[1] < losses[0]
    say(
        "smoke",
        f"2 epochs on {len(splits.train)} images, {result.device} {result.precision}: train loss "
        f"{losses[0]:.3f} -> {losses[-1]:.3f} ({'falls' if falls else 'DOES NOT FALL'}), val acc {result.best_val_acc or 0:.3f}",
    )
    if not falls:
        raise CheckFailed("smoke: the training loss did not fall over 2 epochs")


def documents_on_device(splits: Splits, train_dir: Path, images: int, device: str, workers: int = 2) -> float:
    """Images/s of the documents' pipeline with its model and batches on ``device`` (fp32, NCHW), as the
    documents train on a GPU; the benchmark's documents' side keeps its model on the CPU."""
    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(splits.mean, splits.std),
        ]
    )
    ds = datasets.ImageFolder(str(train_dir), transform=tf)
    warm = 5 * 64
    pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[: images + warm]
    loader = DataLoader(Subset(ds, pick.tolist()), batch_size=64, shuffle=True, num_workers=workers, drop_last=True)
    torch.manual_seed(0)
    model = CifarAlexNet(len(ds.classes), batchnorm=True).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    seen, start = 0, 0.0
    for i, (x, y) in enumerate(loader):
        if i * 64 == warm:
            sync(device)
            seen, start = 0, time.perf_counter()
        loss = F.cross_entropy(model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(y)
    sync(device)
    return seen / (time.perf_counter() - start)


def throughput(device: str, sizes: Sizes, data_dir: str | None) -> None:
    rows = run_bench(data_dir, images=sizes.bench_images, log=lambda m: None)
    doc = rows[0][1]
    for name, speed, ratio in rows:
        say("throughput", f"{name}: {speed:.0f} images/s, {ratio:.2f}x the documents'")
    cfg = config(device, 0, **{"data.val_fraction": 0.0, "data.train_subset": sizes.bench_images})
    splits = load_splits(cfg.data, data_dir)
    on = documents_on_device(splits, resolve_root(cfg.data, data_dir) / "train", sizes.bench_images, device)
    engine = rows[-1][1]
    say(
        "throughput",
        f"documents' pipeline, model on {device} (fp32): {on:.0f} images/s, {on / doc:.2f}x the benchmark's documents' row; "
        f"the engine's defaults are {engine / on:.2f}x it",
    )


def full_epoch(device: str, sizes: Sizes, data_dir: str | None) -> float:
    """One epoch of all 50,000 training images (``--quick``: a subset); returns the training images/s."""
    cfg = config(
        device,
        0,
        epochs=1,
        **{"data.val_fraction": 0.0, "data.train_subset": sizes.epoch_images, "data.test_subset": sizes.eval_images},
    )
    start = time.perf_counter()
    splits = load_splits(cfg.data, data_dir)
    loaded = time.perf_counter() - start
    if not sizes.epoch_images and len(splits.train) != 50_000:
        raise CheckFailed(
            f"epoch: {len(splits.train)} training images in {data_dir or '$STUDYRUNNER_DATA_DIR'}, not CIFAR-10's 50,000"
        )
    sync(device)
    start = time.perf_counter()
    result = fit(cfg, splits)
    sync(device)
    wall = time.perf_counter() - start
    record = result.history[0]
    say(
        "epoch",
        f"{len(splits.train)} images, cifar_alexnet+BN batch 64, {result.device} {result.precision}"
        f"{', channels_last' if cfg.channels_last else ''}: {record.epoch_seconds:.1f} s, {record.images_per_s:.0f} images/s "
        f"(training); fit {wall:.1f} s with moving the data and the test pass; data loaded in {loaded:.1f} s beforehand",
    )
    return record.images_per_s


# --------------------------------------------------------------------------- packed trials


@dataclass
class Fits:
    """What one trial process did between the start signal and its end (time.time(), shared by all)."""

    start: float
    end: float
    seconds: list[float]
    val_acc: list[float]


def fit_worker(args: argparse.Namespace) -> None:
    """A trial process: load the data and warm up, say ready, wait for the start signal, run its fits."""
    over = json.loads(args.fit_worker)
    seeds = over.pop("seeds")
    cfg = config(args.device, over.pop("threads"), **over)
    splits = load_splits(cfg.data, args.data_dir)
    fit(config(args.device, cfg.threads, **{**over, "epochs": 1}), splits)  # CUDA context, kernels, allocator: before the clock
    Path(args.ready).touch()
    go = Path(args.ready).parent / "go"
    while not go.exists():
        time.sleep(0.01)
    start, seconds, accs = time.time(), [], []
    for seed in seeds:
        t = time.perf_counter()
        result: FitResult = fit(config(args.device, cfg.threads, **{**over, "seed": seed}), splits)
        sync(args.device)
        seconds.append(time.perf_counter() - t)
        accs.append(result.history[-1].val_acc or 0.0)
    Path(args.out).write_text(json.dumps(asdict(Fits(start, time.time(), seconds, accs))))


def _trial_processes(groups: list[list[int]], over: dict[str, Any], device: str, data_dir: str | None) -> list[Fits]:
    """Start one process per group of seeds, release them together once all are ready, collect their Fits."""
    folder = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    procs = []
    for i, seeds in enumerate(groups):
        spec = json.dumps({**over, "seeds": seeds})
        cmd = [
            sys.executable,
            __file__,
            "--device",
            device,
            "--fit-worker",
            spec,
            "--ready",
            str(folder / f"ready{i}"),
            "--out",
            str(folder / f"out{i}"),
        ]
        cmd += ["--data-dir", data_dir] if data_dir else []
        procs.append(subprocess.Popen(cmd))
    deadline = time.time() + 300
    while not all((folder / f"ready{i}").exists() for i in range(len(groups))):
        if any(p.poll() not in (None, 0) for p in procs) or time.time() > deadline:
            for p in procs:
                p.kill()
            raise CheckFailed(
                f"packing: a trial process failed or was not ready in 300 s (exit codes {[p.poll() for p in procs]})"
            )
        time.sleep(0.05)
    (folder / "go").touch()
    codes = [p.wait() for p in procs]
    if any(codes):
        raise CheckFailed(f"packing: trial processes ended with exit codes {codes}")
    return [Fits(**json.loads((folder / f"out{i}").read_text())) for i in range(len(groups))]


def packing(device: str, sizes: Sizes, data_dir: str | None, images_per_s: float) -> None:
    """4 trials one after another in one process (all the CPU's threads) against 4 processes at once on the
    same GPU (a quarter of the threads each, as --jobs 4 --trials-per-gpu 4 gives them)."""
    n, cores = sizes.trials, os.cpu_count() or 1
    each = max(1, cores // n)
    epochs = max(1, min(40, round(sizes.trial_seconds * images_per_s / sizes.smoke_images)))
    over = {"epochs": epochs, **small_data(sizes)}
    seq = _trial_processes([list(range(n))], {**over, "threads": cores}, device, data_dir)[0]
    packed = _trial_processes([[s] for s in range(n)], {**over, "threads": each}, device, data_dir)
    seq_wall = seq.end - seq.start
    packed_wall = max(f.end for f in packed) - min(f.start for f in packed)
    accs = seq.val_acc + [a for f in packed for a in f.val_acc]
    say(
        "packing",
        f"{n} trials of {epochs} epoch{'s' * (epochs > 1)} x {sizes.smoke_images} images on one {device}: one after another "
        f"({cores} threads) {seq_wall:.1f} s, {n} at once ({each} thread{'s' * (each > 1)} each) {packed_wall:.1f} s: "
        f"{seq_wall / packed_wall:.2f}x the throughput packed "
        f"(a trial alone {sum(seq.seconds) / n:.1f} s, packed {sum(s for f in packed for s in f.seconds) / n:.1f} s; "
        f"val acc {min(accs):.3f}-{max(accs):.3f})",
    )
    if min(accs) <= 0.15:  # 10 classes: chance is 0.1
        raise CheckFailed(f"packing: a trial did not learn (val acc {min(accs):.3f})")


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="studyrunner's GPU check: one line per figure.")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default; refused without one) or cpu")
    ap.add_argument("--quick", action="store_true", help="small subsets, one short epoch: proves the script in ~2-3 min on a CPU")
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 image folders (default $STUDYRUNNER_DATA_DIR)")
    ap.add_argument("--fit-worker", default=None, help=argparse.SUPPRESS)  # a packed-trial process (JSON of its settings)
    ap.add_argument("--ready", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.fit_worker:
        fit_worker(args)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA GPU here (torch {torch.__version__}: torch.cuda.is_available() is False); "
            "run it on a CUDA machine, or check the script itself with --device cpu --quick",
            file=sys.stderr,
        )
        return 2
    sizes, start = (QUICK if args.quick else FULL), time.perf_counter()
    header(args.device)
    try:
        smoke(args.device, sizes, args.data_dir)
        throughput(args.device, sizes, args.data_dir)
        speed = full_epoch(args.device, sizes, args.data_dir)
        packing(args.device, sizes, args.data_dir, speed)
    except (CheckFailed, StudyrunnerError) as exc:  # a failed check, or data or a setting studyrunner refused
        say("FAILED", str(exc))
        return 1
    say("done", f"every check passed in {time.perf_counter() - start:.0f} s{' (--quick)' if args.quick else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

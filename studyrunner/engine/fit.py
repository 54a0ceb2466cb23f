"""The shared train/eval core: ``fit(config, splits, on_epoch)`` runs one configuration.

It knows nothing of Optuna, MLflow, YAML or the CLI: a study's objective, ``studyrunner train``
and the benchmark all call it. The training set lives on the training device; batches are built
by index and augmented there; evaluation runs under ``torch.inference_mode`` in large batches.

Configs reach the engine resolved (``resolve.resolve_config``, called once where a config is built):
no ``auto`` image size, device or precision is left for anything downstream to decide.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from studyrunner.config import AugmentConfig, TrainConfig
from studyrunner.engine.augment import augment_batch, normalize
from studyrunner.engine.checkpoint import MUTABLE_KEYS, identity, save_checkpoint, state_path
from studyrunner.engine.data import Splits, batches
from studyrunner.engine.decode import ImageSet, cache_root
from studyrunner.engine.features import cache_for, digest, extract, random_augmentation
from studyrunner.engine.models import build_model, head_module, load_init, weights_normalisation
from studyrunner.engine.optim import Schedule, build_optimizer, take_hyperparameters
from studyrunner.engine.resolve import is_resolved
from studyrunner.engine.transfer import TransferPolicy
from studyrunner.files import atomic_write

__all__ = [
    "EpochRecord",
    "FitResult",
    "Context",
    "fit",
    "build_context",
    "inference_context",
    "train_one_epoch",
    "predict",
    "evaluate",
    "placement",
]

FitOutcome = Literal["completed", "diverged", "stopped"]  # how fit ended (the search wing's Outcome is wider)
OnEpoch = Callable[["EpochRecord"], bool | None] | None  # return True to stop early
OnBatch = Callable[[int, int], None] | None  # (batches done, batches in epoch)
_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float  # fraction in [0, 1], on the augmented training batches
    val_loss: float | None
    val_acc: float | None
    lr: float  # learning rate at the end of the epoch (before the scheduler step)
    epoch_seconds: float  # training + validation wall time
    images_per_s: float  # training images per second (training phase only)


@dataclass
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    outcome: FitOutcome = "completed"
    reason: str = ""  # why the run diverged or stopped
    best_epoch: int = 0  # epoch with the best val_acc (the last epoch when there is no val split)
    best_val_acc: float | None = None
    test_loss: float | None = None  # of the best epoch's weights
    test_acc: float | None = None
    device: str = ""
    precision: str = ""
    num_params: int = 0
    checkpoint_dir: str = ""
    init: str = "scratch"  # what the weights started from (model.init, summarised)
    classes: list[str] = field(default_factory=list)
    val_confusion: list[list[int]] = field(default_factory=list)  # [true][predicted], best weights, val set
    notes: list[str] = field(default_factory=list)  # how it ran: feature cache, data placement
    resumed_from: int = 0  # the epochs restored from a resume state (0: trained from the start)

    @property
    def per_class_val_acc(self) -> dict[str, float]:
        return {c: row[i] / max(1, sum(row)) for i, (c, row) in enumerate(zip(self.classes, self.val_confusion, strict=True))}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the context of a run


@dataclass
class Context:
    """What every batch needs, built once per fit: the model on its device, the autocast dtype,
    the normalisation, the memory format and the transfer policy."""

    model: nn.Module
    device: torch.device
    dtype: torch.dtype | None
    mean: torch.Tensor
    std: torch.Tensor
    channels_last: bool = False
    policy: TransferPolicy = field(default_factory=TransferPolicy)
    imagenet: bool = False  # inputs normalised with pretrained weights' statistics (recorded in checkpoints)
    network: nn.Module | None = None  # the whole model, when ``model`` is only its head trained on cached features

    @property
    def whole(self) -> nn.Module:
        """The whole network (what checkpoints hold)."""
        return self.network or self.model

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_inputs(self, x: torch.Tensor, augment: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
        """A training batch as the model takes it: augmented and normalised images, or features as they are."""
        return x if self.network is not None else self.prepare(augment_batch(x, augment, self.mean, self.std, gen))

    def eval_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.network is not None else self.prepare(normalize(x, self.mean, self.std))

    def autocast(self) -> AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)


def build_context(cfg: TrainConfig, classes: Sequence[str], mean: Sequence[float], std: Sequence[float]) -> tuple[Context, str]:
    """The model of ``cfg`` (initialised as ``model.init`` says) in its context, and a one-line
    summary of its initialisation. ``mean``/``std`` are the data's; ImageNet weights keep ImageNet's."""
    _require_resolved(cfg)
    device = torch.device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(classes), cfg.data.image_size)
    init = load_init(model, cfg.model)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    pretrained = weights_normalisation(cfg.model)  # inputs as in the weights' pretraining
    mean, std = pretrained or (mean, std)
    policy = TransferPolicy.from_config(cfg, init.fresh)
    ctx = Context(
        model, device, _DTYPES[cfg.precision], torch.tensor(mean, device=device), torch.tensor(std, device=device),
        cfg.channels_last, policy, pretrained is not None,
    )  # fmt: skip
    return ctx, init.summary


def inference_context(model: nn.Module, mean: Sequence[float], std: Sequence[float], device: str = "cpu") -> Context:
    """A context for predicting with a model already built and loaded (fp32, NCHW)."""
    dev = torch.device(device)
    return Context(model.to(dev), dev, None, torch.tensor(mean, device=dev), torch.tensor(std, device=dev))


def _require_resolved(cfg: TrainConfig) -> None:
    if not is_resolved(cfg):
        raise ValueError("the engine needs a resolved config (no auto device, precision or image size): use resolve_config(cfg)")


# --------------------------------------------------------------------------- one epoch, evaluation


def train_one_epoch(
    ctx: Context,
    data: ImageSet,
    cfg: TrainConfig,
    opt: torch.optim.Optimizer,
    schedule: Schedule,
    gen: torch.Generator,
    epoch: int = 1,
    on_batch: OnBatch = None,
) -> tuple[float, float, float, float]:
    """One pass over ``data``; returns (mean loss, accuracy, images/s, the first batch's loss).
    Stops early on a non-finite loss."""
    ctx.policy.start_epoch(ctx.model, epoch)
    loss_sum = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device, dtype=torch.int64)
    seen, start, first = 0, time.perf_counter(), math.nan
    index_batches = list(batches(len(data), cfg.batch_size, gen, ctx.device))
    for i, idx in enumerate(index_batches):
        images, y = data.take(idx, ctx.device)
        x = ctx.train_inputs(images, cfg.augment, gen)
        with ctx.autocast():
            logits = ctx.model(x)
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.after_batch()
        loss_sum += loss.detach().float() * len(idx)
        correct += (logits.argmax(1) == y).sum()
        seen += len(idx)
        if i == 0:
            first = float(loss.detach())
        if (i + 1) % 25 == 0 or i + 1 == len(index_batches):
            if on_batch:
                on_batch(i + 1, len(index_batches))
            if not torch.isfinite(loss_sum):  # no point finishing a diverged epoch
                break
    seconds = time.perf_counter() - start
    return float(loss_sum) / seen, float(correct) / seen, seen / seconds, first


@torch.inference_mode()
def predict(ctx: Context, data: ImageSet, batch_size: int) -> tuple[float, torch.Tensor]:
    """(summed loss, predicted labels) of ``ctx.model`` on ``data``, un-augmented."""
    ctx.model.eval()
    loss_sum, preds = 0.0, []
    for start in range(0, len(data), batch_size):
        x = ctx.eval_inputs(data.images[start : start + batch_size].to(ctx.device, non_blocking=True))
        y = data.labels[start : start + batch_size].to(ctx.device, non_blocking=True)
        with ctx.autocast():
            logits = ctx.model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        preds.append(logits.argmax(1))
    return loss_sum, torch.cat(preds)


def evaluate(ctx: Context, data: ImageSet, batch_size: int) -> tuple[float, float]:
    """(mean loss, accuracy) of ``ctx.model`` on ``data``, un-augmented."""
    loss_sum, pred = predict(ctx, data, batch_size)
    return loss_sum / len(data), float((pred.cpu() == data.labels.cpu()).float().mean())


def confusion(ctx: Context, data: ImageSet, batch_size: int, classes: int) -> torch.Tensor:
    """Counts [true, predicted] on ``data``."""
    _, pred = predict(ctx, data, batch_size)
    return torch.bincount(data.labels.cpu() * classes + pred.cpu(), minlength=classes * classes).view(classes, classes)


# --------------------------------------------------------------------------- fit


def _divergence(loss: float, factor: float, chance: float, start: float) -> str:
    """Why a run with this epoch's mean training ``loss`` diverged, or "". It diverged when the loss
    is not finite, or above ``factor`` x the larger of the chance-level loss and ``start``, the loss
    of the run's very first batch: a fresh head on large pretrained features can start far above
    chance level and still be learning, while a diverging run climbs far from where it began."""
    if not math.isfinite(loss):
        return f"train loss became {loss}"
    base = max(chance, start) if math.isfinite(start) else chance
    if loss > factor * base:
        what = "chance-level loss" if base == chance else "its first batch's loss"
        return f"train loss {loss:.3g} exceeded {factor * base:.3g} (diverge_factor x {what} {base:.3g})"
    return ""


@dataclass
class _Training:
    """The mutable state of one fit: what the epoch loop reads and updates."""

    cfg: TrainConfig
    ctx: Context
    splits: Splits
    opt: torch.optim.Optimizer
    schedule: Schedule
    gen: torch.Generator
    result: FitResult
    out: Path | None
    best_state: dict[str, torch.Tensor] | None = None
    start_loss: float = math.nan  # the loss of the run's first batch: where it started


def placement(need: int, free: int, budget: float) -> str:
    """Where a run's images live: "device" when ``need`` bytes fit in ``budget`` x the device's
    ``free`` bytes, else "host" (batches are then copied to the device as they are used)."""
    return "device" if need <= budget * free else "host"


def _place(splits: Splits, device: torch.device, budget: float) -> tuple[Splits, str]:
    if device.type != "cuda":  # CPU (and unified-memory MPS): the images are where the model is
        return splits.to(device), ""
    free, _ = torch.cuda.mem_get_info(device)
    if placement(splits.nbytes, free, budget) == "device":
        return splits.to(device), f"images on {device} ({splits.nbytes / 2**30:.2f} GiB)"
    return splits.pinned(), (
        f"images in pinned host memory: {splits.nbytes / 2**30:.2f} GiB exceed data.device_budget {budget:g} x "
        f"{free / 2**30:.1f} GiB free on {device}; batches are copied as they are used"
    )


_WHERE = {"memory": "reused from this process", "disk": "read from the feature cache", "computed": "computed now"}


def _on_features(ctx: Context, splits: Splits, cfg: TrainConfig) -> tuple[Context, Splits, str]:
    """The head alone, trained on the frozen backbone's features (computed once, cached)."""
    head = head_module(ctx.model)
    cache = cache_for(cache_root(cfg.data))
    extra = f"{cfg.model.name}|{cfg.data.image_size}|{ctx.mean.tolist()}|{ctx.std.tolist()}|{ctx.dtype}"
    sources: list[str] = []

    def features(s: ImageSet | None, split: str) -> ImageSet | None:
        if s is None:
            return None
        inputs = lambda x: ctx.eval_inputs(x.to(ctx.device, non_blocking=True))  # noqa: E731
        compute = lambda: extract(ctx.model, head, s.images, inputs, ctx.autocast, cfg.eval_batch_size)  # noqa: E731
        feats, where = cache.get(digest(ctx.model, head, s.images, extra), compute)
        sources.append(f"{split} {_WHERE.get(where, where)}")
        return ImageSet(feats.to(ctx.device), s.labels.to(ctx.device), s.classes)

    train = features(splits.train, "train")
    assert train is not None
    val, test = features(splits.val, "val"), features(splits.test, "test")
    on = Splits(train, val, test, splits.classes, splits.mean, splits.std)
    head_net = nn.Sequential(nn.Dropout(cfg.model.head_dropout), head)
    dims = train.images.shape[1]
    note = (
        f"frozen backbone: only the head trains, on the backbone's {dims} features per image, "
        f"computed once and cached ({'; '.join(sources)})"
    )
    return replace(ctx, model=head_net, network=ctx.model), on, note


def _start(cfg: TrainConfig, splits: Splits) -> _Training:
    _require_resolved(cfg)
    if splits.train.images.shape[-1] != cfg.data.image_size:
        raise ValueError(f"splits hold {splits.train.images.shape[-1]} px images, the config asks for {cfg.data.image_size}")
    ctx, init = build_context(cfg, splits.classes, splits.mean, splits.std)
    splits, where = _place(splits, ctx.device, cfg.data.device_budget)
    notes = [where] if where else []
    if ctx.policy.fixed_backbone and cfg.model.feature_cache and not random_augmentation(cfg.augment):
        ctx, splits, note = _on_features(ctx, splits, cfg)
        notes.append(note)
    elif ctx.policy.fixed_backbone:
        why = "model.feature_cache is off" if not cfg.model.feature_cache else "the augmentation changes every epoch"
        notes.append(f"frozen backbone, full forward pass every batch: {why}")
    steps = math.ceil(len(splits.train) / cfg.batch_size)
    opt = build_optimizer(ctx.policy.param_groups(ctx.model), cfg.optim)
    result = FitResult(
        device=str(ctx.device),
        precision=str(ctx.dtype or torch.float32).replace("torch.", ""),
        num_params=sum(p.numel() for p in ctx.whole.parameters()),
        checkpoint_dir=cfg.out_dir,
        init=init,
        classes=list(splits.classes),
        notes=notes,
    )
    out = Path(cfg.out_dir) if cfg.out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=ctx.device).manual_seed(cfg.seed)
    return _Training(cfg, ctx, splits, opt, Schedule(opt, cfg.sched, cfg.epochs, steps), gen, result, out)


def _epoch(training: _Training, epoch: int, on_batch: OnBatch) -> EpochRecord:
    """Train one epoch and validate: the epoch's record."""
    cfg, splits = training.cfg, training.splits
    start = time.perf_counter()
    tr_loss, tr_acc, tr_speed, first = train_one_epoch(
        training.ctx, splits.train, cfg, training.opt, training.schedule, training.gen, epoch, on_batch
    )
    if epoch == 1:
        training.start_loss = first
    val_loss = val_acc = None
    if splits.val is not None and math.isfinite(tr_loss):
        val_loss, val_acc = evaluate(training.ctx, splits.val, cfg.eval_batch_size)
    return EpochRecord(epoch, tr_loss, tr_acc, val_loss, val_acc, training.schedule.lr, time.perf_counter() - start, tr_speed)


def _keep_if_best(training: _Training, record: EpochRecord) -> None:
    """Remember (and checkpoint) the weights of the best validation accuracy so far."""
    result = training.result
    if record.val_acc is None or result.best_val_acc is None or record.val_acc > result.best_val_acc:
        result.best_epoch, result.best_val_acc = record.epoch, record.val_acc
        training.best_state = copy.deepcopy(training.ctx.model.state_dict())
        if training.out:
            save_checkpoint(training.out / "best.pt", training.ctx, training.cfg, record, training.splits.classes)


def _save_state(training: _Training) -> None:
    """Everything the next epoch needs, written atomically every ``state_every`` epochs."""
    path = state_path(training.cfg)
    if path is None or len(training.result.history) % training.cfg.state_every:
        return
    blob = {
        "config": identity(training.cfg),
        "model": training.ctx.model.state_dict(),
        "optimizer": training.opt.state_dict(),
        "schedule": training.schedule.state_dict(),
        "generator": training.gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": [asdict(r) for r in training.result.history],
        "best": {"state": training.best_state, "epoch": training.result.best_epoch, "val_acc": training.result.best_val_acc},
        "start_loss": training.start_loss,
    }
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def _resume(training: _Training, on_epoch: OnEpoch, segment_start: int | None) -> int:
    """Restore the run from its state file (when it is this config's): the epochs already done."""
    path = state_path(training.cfg)
    if path is None or not path.is_file():
        return 0
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)  # tensors are copied into the run's own
    except Exception:  # a damaged state file: start over rather than continue from garbage
        return 0
    inherit = segment_start is not None
    saved = dict(blob.get("config") or {})
    if identity(training.cfg, inherit) != ({k: v for k, v in saved.items() if k not in MUTABLE_KEYS} if inherit else saved):
        return 0
    training.ctx.model.load_state_dict(blob["model"])
    training.opt.load_state_dict(blob["optimizer"])
    if inherit:
        take_hyperparameters(training.opt, float(saved.get("optim.lr") or training.cfg.optim.lr), training.cfg.optim)
    training.schedule.load_state_dict(blob["schedule"])
    training.gen.set_state(blob["generator"])
    torch.set_rng_state(blob["torch_rng"])
    best = blob["best"]
    if not inherit or (best["epoch"] or 0) > segment_start:  # a segment's best counts its own epochs only
        training.best_state, training.result.best_epoch, training.result.best_val_acc = (
            best["state"], best["epoch"], best["val_acc"]
        )  # fmt: skip
    training.start_loss = blob["start_loss"]
    training.result.history = [EpochRecord(**r) for r in blob["history"]]
    training.result.notes.append(f"resumed after epoch {len(training.result.history)} from {path}")
    for record in training.result.history:
        if on_epoch:
            on_epoch(record)
    return len(training.result.history)


def _finish(training: _Training) -> None:
    """Last checkpoint; then, on the best weights, the validation confusion matrix and the test set."""
    result, ctx, splits, cfg = training.result, training.ctx, training.splits, training.cfg
    if training.out and result.history:
        save_checkpoint(training.out / "last.pt", ctx, cfg, result.history[-1], splits.classes)
    if result.outcome == "diverged" or training.best_state is None:
        return
    ctx.model.load_state_dict(training.best_state)
    if splits.val is not None:
        result.val_confusion = confusion(ctx, splits.val, cfg.eval_batch_size, len(splits.classes)).tolist()
    if splits.test is not None:
        result.test_loss, result.test_acc = evaluate(ctx, splits.test, cfg.eval_batch_size)


def fit(
    cfg: TrainConfig,
    splits: Splits,
    on_epoch: OnEpoch = None,
    on_batch: OnBatch = None,
    resume: bool = False,
    segment_start: int | None = None,
    on_resume: Callable[[int], None] | None = None,
) -> FitResult:
    """Train ``cfg`` (resolved) on ``splits``: one EpochRecord per epoch, then the test set on the best weights.

    ``resume``: continue from the state file in ``out_dir`` (``state_every``) when one of the same
    configuration is there; its epochs are passed to ``on_epoch`` again, in order, first, then
    their number to ``on_resume`` (0: none), before training goes on.

    ``segment_start`` (population-based training): the state file may be another member's, at
    this epoch or later; it is taken whatever its ``MUTABLE_KEYS`` (the optimizer then runs at this
    config's learning rate, momentum and weight decay), and the best weights are this segment's own.

    ``on_epoch`` sees every record as it is made and may return True to stop early (outcome
    ``stopped``); exceptions it raises (a pruner's, say) propagate. A non-finite or exploding
    training loss ends the run with outcome ``diverged`` instead of an exception.
    """
    training = _start(cfg, splits)
    done = training.result.resumed_from = _resume(training, on_epoch, segment_start) if resume else 0
    if resume and on_resume is not None:  # before training: an interrupted run still knows where it began
        on_resume(done)
    chance = math.log(max(2, len(splits.classes)))  # the loss of a uniform guess
    for epoch in range(done + 1, cfg.epochs + 1):
        record = _epoch(training, epoch, on_batch)
        training.result.history.append(record)
        reason = _divergence(record.train_loss, cfg.diverge_factor, chance, training.start_loss)
        if reason:
            training.result.outcome, training.result.reason = "diverged", f"epoch {epoch}: {reason}"
            break
        _keep_if_best(training, record)
        training.schedule.after_epoch(
            {k: v for k, v in (("val_acc", record.val_acc), ("val_loss", record.val_loss)) if v is not None}
        )
        _save_state(training)
        if on_epoch and on_epoch(record):
            training.result.outcome, training.result.reason = "stopped", f"stopped by the caller after epoch {epoch}"
            break
    _finish(training)
    return training.result

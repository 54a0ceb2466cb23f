"""The shared train/eval core: ``fit(config, splits, on_epoch)`` runs one configuration.

It knows nothing of Optuna, MLflow, YAML or the CLI: a study's objective, ``studyrunner train``
and the benchmark all call it. The training set lives on the training device; batches are built
by index and augmented there; evaluation runs under ``torch.inference_mode`` in large batches.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .augment import augment_batch, normalize
from .config import TrainConfig, config_to_dict
from .data import ImageSet, Splits, batches
from .models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_parameters,
    build_model,
    freeze_backbone_norms,
    head_parameters,
    load_init,
    resolve_input,
    set_backbone_trainable,
)
from .optim import Schedule, build_optimizer

__all__ = ["EpochRecord", "FitResult", "fit", "evaluate", "resolve_device", "resolve_precision"]

Outcome = Literal["completed", "diverged", "stopped"]
OnEpoch = Callable[["EpochRecord"], bool | None] | None  # return True to stop early
OnBatch = Callable[[int, int], None] | None  # (batches done, batches in epoch)


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
    outcome: Outcome = "completed"
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

    @property
    def per_class_val_acc(self) -> dict[str, float]:
        return {c: row[i] / max(1, sum(row)) for i, (c, row) in enumerate(zip(self.classes, self.val_confusion, strict=True))}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else mps, else cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. ``auto`` = bf16 where the hardware has it natively
    (CUDA GPUs with bf16, CPUs with AVX512-BF16/AMX), else fp32. On a 2-core AVX512-BF16 CPU,
    bf16 + channels_last trained document 004's net 1.9x faster than fp32 (README, Performance).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return None


def _cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX), where oneDNN's bf16
    kernels beat fp32; without it bf16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return torch.ops.mkldnn._is_mkldnn_bf16_supported() and ("avx512_bf16" in flags or "amx_bf16" in flags)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class _Ctx:
    """What every batch needs, built once per fit."""

    model: nn.Module
    device: torch.device
    dtype: torch.dtype | None
    mean: torch.Tensor
    std: torch.Tensor
    channels_last: bool
    frozen: bool = False  # backbone frozen: its BatchNorm statistics stay fixed too
    fresh: frozenset[str] = frozenset()  # backbone parameters not loaded by model.init: never frozen
    imagenet: bool = False  # inputs normalised with ImageNet's statistics (recorded in checkpoints)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def train_one_epoch(
    ctx: _Ctx,
    data: ImageSet,
    cfg: TrainConfig,
    opt: torch.optim.Optimizer,
    schedule: Schedule,
    gen: torch.Generator,
    on_batch: OnBatch = None,
) -> tuple[float, float, float]:
    """One pass over ``data``; returns (mean loss, accuracy, images/s). Stops early on a non-finite loss."""
    ctx.model.train()
    if ctx.frozen:
        freeze_backbone_norms(ctx.model, ctx.fresh)
    loss_sum = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device, dtype=torch.int64)
    seen, start = 0, time.perf_counter()
    index_batches = list(batches(len(data), cfg.batch_size, gen, ctx.device))
    for i, idx in enumerate(index_batches):
        x = ctx.prepare(augment_batch(data.images[idx], cfg.augment, ctx.mean, ctx.std, gen))
        y = data.labels[idx]
        with _autocast(ctx.device, ctx.dtype):
            logits = ctx.model(x)
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.after_batch()
        loss_sum += loss.detach().float() * len(idx)
        correct += (logits.argmax(1) == y).sum()
        seen += len(idx)
        if (i + 1) % 25 == 0 or i + 1 == len(index_batches):
            if on_batch:
                on_batch(i + 1, len(index_batches))
            if not torch.isfinite(loss_sum):  # no point finishing a diverged epoch
                break
    seconds = time.perf_counter() - start
    return float(loss_sum) / seen, float(correct) / seen, seen / seconds


@torch.inference_mode()
def predict(ctx: _Ctx, data: ImageSet, batch_size: int) -> tuple[float, torch.Tensor]:
    """(summed loss, predicted labels) of ``ctx.model`` on ``data``, un-augmented."""
    ctx.model.eval()
    loss_sum, preds = 0.0, []
    for start in range(0, len(data), batch_size):
        x = ctx.prepare(normalize(data.images[start : start + batch_size], ctx.mean, ctx.std))
        y = data.labels[start : start + batch_size]
        with _autocast(ctx.device, ctx.dtype):
            logits = ctx.model(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        preds.append(logits.argmax(1))
    return loss_sum, torch.cat(preds)


def evaluate(ctx: _Ctx, data: ImageSet, batch_size: int) -> tuple[float, float]:
    """(mean loss, accuracy) of ``ctx.model`` on ``data``, un-augmented."""
    loss_sum, pred = predict(ctx, data, batch_size)
    return loss_sum / len(data), float((pred == data.labels).float().mean())


def confusion(ctx: _Ctx, data: ImageSet, batch_size: int, classes: int) -> torch.Tensor:
    """Counts [true, predicted] on ``data``."""
    _, pred = predict(ctx, data, batch_size)
    return torch.bincount(data.labels * classes + pred, minlength=classes * classes).view(classes, classes).cpu()


def _save(path: Path, ctx: _Ctx, cfg: TrainConfig, record: EpochRecord, classes: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": ctx.model.state_dict(),
            "normalisation": "imagenet" if ctx.imagenet else "data",
            "mean": ctx.mean.tolist(),
            "std": ctx.std.tolist(),
            "config": config_to_dict(cfg),
            "epoch": record.epoch,
            "metrics": asdict(record),
            "classes": classes,
        },
        tmp,
    )
    tmp.replace(path)


def _divergence(loss: float, limit: float) -> str:
    if not math.isfinite(loss):
        return f"train loss became {loss}"
    if loss > limit:
        return f"train loss {loss:.3g} exceeded {limit:.3g} (diverge_factor x chance-level loss)"
    return ""


def _setup(cfg: TrainConfig, splits: Splits) -> tuple[_Ctx, FitResult]:
    device = resolve_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(splits.classes), cfg.data.image_size)
    init = load_init(model, cfg.model)
    model = model.to(device)
    if cfg.model.freeze == "backbone":
        set_backbone_trainable(model, False, init.fresh)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    dtype = resolve_precision(cfg.precision, device)
    mean = torch.tensor(IMAGENET_MEAN if init.imagenet else splits.mean, device=device)  # as in its pretraining
    std = torch.tensor(IMAGENET_STD if init.imagenet else splits.std, device=device)
    ctx = _Ctx(model, device, dtype, mean, std, cfg.channels_last, cfg.model.freeze == "backbone", init.fresh, init.imagenet)
    result = FitResult(
        device=str(device),
        precision=str(dtype or torch.float32).replace("torch.", ""),
        num_params=sum(p.numel() for p in model.parameters()),
        checkpoint_dir=cfg.out_dir,
        init=init.summary,
        classes=list(splits.classes),
    )
    return ctx, result


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Head at optim.lr, backbone at optim.lr x optim.backbone_lr_mult (one group when equal)."""
    if cfg.optim.backbone_lr_mult == 1.0:
        return [{"params": list(model.parameters())}]
    return [
        {"params": backbone_parameters(model), "lr": cfg.optim.lr * cfg.optim.backbone_lr_mult},
        {"params": head_parameters(model)},
    ]


def fit(cfg: TrainConfig, splits: Splits, on_epoch: OnEpoch = None, on_batch: OnBatch = None) -> FitResult:
    """Train ``cfg`` on ``splits``: one EpochRecord per epoch, then the test set on the best weights.

    ``on_epoch`` sees every record as it is made and may return True to stop early (outcome
    ``stopped``); exceptions it raises (a pruner's, say) propagate. A non-finite or exploding
    training loss ends the run with outcome ``diverged`` instead of an exception.
    """
    cfg = resolve_input(cfg)
    if splits.train.images.shape[-1] != cfg.data.image_size:
        raise ValueError(f"splits hold {splits.train.images.shape[-1]} px images, the config asks for {cfg.data.image_size}")
    ctx, result = _setup(cfg, splits)
    splits = splits.to(ctx.device)
    gen = torch.Generator(device=ctx.device).manual_seed(cfg.seed)
    steps = math.ceil(len(splits.train) / cfg.batch_size)
    opt = build_optimizer(_param_groups(ctx.model, cfg), cfg.optim)  # type: ignore[arg-type]
    schedule = Schedule(opt, cfg.sched, cfg.epochs, steps)
    limit = cfg.diverge_factor * math.log(max(2, len(splits.classes)))
    out = Path(cfg.out_dir) if cfg.out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    best_state: dict[str, torch.Tensor] | None = None
    for epoch in range(1, cfg.epochs + 1):
        if ctx.frozen and epoch == cfg.model.unfreeze_epoch:  # fine-tune the whole net from here on
            set_backbone_trainable(ctx.model, True)
            ctx.frozen = False
        start = time.perf_counter()
        tr_loss, tr_acc, tr_speed = train_one_epoch(ctx, splits.train, cfg, opt, schedule, gen, on_batch)
        lr = schedule.lr
        val_loss = val_acc = None
        if splits.val is not None and math.isfinite(tr_loss):
            val_loss, val_acc = evaluate(ctx, splits.val, cfg.eval_batch_size)
        record = EpochRecord(epoch, tr_loss, tr_acc, val_loss, val_acc, lr, time.perf_counter() - start, tr_speed)
        result.history.append(record)
        reason = _divergence(tr_loss, limit)
        if reason:
            result.outcome, result.reason = "diverged", f"epoch {epoch}: {reason}"
            break
        if val_acc is None or result.best_val_acc is None or val_acc > result.best_val_acc:
            result.best_epoch, result.best_val_acc = epoch, val_acc
            best_state = copy.deepcopy(ctx.model.state_dict())
            if out:
                _save(out / "best.pt", ctx, cfg, record, splits.classes)
        metrics = {k: v for k, v in (("val_acc", val_acc), ("val_loss", val_loss)) if v is not None}
        schedule.after_epoch(metrics)
        if on_epoch and on_epoch(record):
            result.outcome, result.reason = "stopped", f"stopped by the caller after epoch {epoch}"
            break
    if out and result.history:
        _save(out / "last.pt", ctx, cfg, result.history[-1], splits.classes)
    if result.outcome != "diverged" and best_state is not None:
        ctx.model.load_state_dict(best_state)
        if splits.val is not None:
            cm = confusion(ctx, splits.val, cfg.eval_batch_size, len(splits.classes))
            result.val_confusion = cm.tolist()
        if splits.test is not None:
            result.test_loss, result.test_acc = evaluate(ctx, splits.test, cfg.eval_batch_size)
    return result

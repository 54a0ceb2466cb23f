"""The one configuration object of a training run.

Every field has a default (the documents' value where they give one) and a comment with its
unit. Configs are frozen; change them with :func:`apply_overrides`, which validates dotted keys
(``optim.lr``) and values and lists what is allowed when something is wrong.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from studyrunner.errors import StudyrunnerError

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "SchedConfig",
    "TrainConfig",
    "allowed_keys",
    "apply_overrides",
    "config_to_dict",
    "flatten",
    "RUNTIME_KEYS",
]

# keys that say where or how fast a run happens, not what it trains: they may differ between the runs
# of one study, between a trial and its resumed retry, and between machines
RUNTIME_KEYS = frozenset({"out_dir", "threads", "device", "precision", "eval_batch_size", "data.path", "data.cache_dir"})

DatasetName = Literal["cifar10", "folder"]
ModelName = Literal["cifar_alexnet", "resnet18", "resnet34", "resnet50", "alexnet", "efficientnet_lite0"]
OptimName = Literal["sgd", "adam", "adamw", "rmsprop"]
SchedName = Literal["none", "step", "multistep", "plateau", "cosine", "onecycle"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class ConfigError(StudyrunnerError):
    """A configuration key or value that is not allowed; the message says what is."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key  # the dotted key at fault, when one is


@dataclass(frozen=True)
class DataConfig:
    dataset: DatasetName = "cifar10"  # cifar10 (torchvision batches or image folders) | folder (own data)
    path: str = ""  # data root; "" = --data-dir or $STUDYRUNNER_DATA_DIR
    train_subset: int = 0  # training images used (seeded, stratified); 0 = all
    val_subset: int = 0  # validation images used (seeded, stratified); 0 = all
    test_subset: int = 0  # test images used (seeded, stratified); 0 = all
    val_fraction: float = 0.1  # share of the training set held out for validation (0 = none)
    split_seed: int = 0  # seed of the val split and the subset (fixed across training seeds)
    image_size: int = 0  # pixels (resized on the shorter side, centre-cropped); 0 = 224 for ImageNet-pretrained weights, else 32
    # pixels the shorter side is resized to before the centre crop; 0 = 256/224 x image_size for ImageNet weights
    # (document 000's Resize(256) + CenterCrop(224)), else image_size
    resize: int = 0
    cache_dir: str = ""  # decoded-image cache; "" = $STUDYRUNNER_CACHE_DIR or ~/.cache/studyrunner
    classes: tuple[str, ...] = ()  # keep only these class names (relabelled in source order); () = all
    val_from: Literal["train", "test"] = "train"  # test: the test (or val) folder is the validation set, no test set
    device_budget: float = (
        0.5  # share of the training device's free memory the images may take; beyond it they stay in host memory
    )
    # where data.dataset=folder's classes come from: "" = class folders (data.path/<class>/ or train/ val/ test/ of
    # them); "prefix" = a flat folder (or train/ val/ test/ folders) of images whose class is the file name's leading
    # letters (fist_0001.jpg -> fist); "FILE.csv" = rows of path,label (header optional; paths relative to data.path,
    # absolute, or found by file name under it), validation split from it by val_fraction; or one CSV per split,
    # "train=A.csv,val=B.csv,test=C.csv" (val and test optional). A CSV name is relative to data.path, else the
    # working directory
    labels: str = ""
    # unreadable images (and CSV rows whose file is missing) are left out, with a note naming them, instead of
    # refusing to train; false = one error naming them all
    skip_bad: bool = False


@dataclass(frozen=True)
class ModelConfig:
    name: ModelName = "cifar_alexnet"  # see studyrunner.models.MODELS
    batchnorm: bool = False  # cifar_alexnet: BatchNorm after every conv (document 004 step 5)
    # cifar_alexnet: dropout probability after pool1, pool2, conv4, fc1 (document 004 step 6)
    dropout: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    cifar_stem: bool = True  # resnets: 3x3 stride-1 first conv, no max-pool (32 px); ImageNet weights keep their stem
    # scratch | imagenet (torchvision weights) | path to a state dict or checkpoint | study:NAME
    # (the best checkpoint of an earlier study); the classifier head is always fresh
    init: str = "scratch"
    freeze: Literal["none", "backbone"] = "none"  # backbone = train the classifier head only
    head_dropout: float = 0.0  # efficientnet_lite0: dropout probability on the features before the classifier
    # freeze=backbone that never unfreezes, no per-epoch augmentation: compute the backbone's features once and
    # train the head on them (the same result, far faster); false = always the full forward pass
    feature_cache: bool = True
    unfreeze_epoch: int = 0  # with freeze=backbone: train the whole net from this epoch on (0 = never)


@dataclass(frozen=True)
class OptimConfig:
    name: OptimName = "sgd"
    lr: float = 0.01  # learning rate (peak LR for onecycle)
    momentum: float = 0.9  # sgd momentum / rmsprop momentum
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0  # L2 penalty (decoupled for adamw)
    beta1: float = 0.9  # adam/adamw first-moment decay
    beta2: float = 0.999  # adam/adamw second-moment decay
    backbone_lr_mult: float = 1.0  # backbone LR = lr x this (the head always gets lr)


@dataclass(frozen=True)
class SchedConfig:
    name: SchedName = "none"
    step_size: int = 25  # step: epochs between decays
    gamma: float = 0.1  # step/multistep: LR multiplier at each decay
    milestones: tuple[int, ...] = (30, 80)  # multistep: epochs at which LR decays
    monitor: Literal["val_acc", "val_loss"] = "val_acc"  # plateau: metric watched
    mode: Literal["max", "min"] = "max"  # plateau: max for accuracy, min for loss
    factor: float = 0.5  # plateau: LR multiplier on a plateau
    patience: int = 10  # plateau: epochs without improvement before decaying
    threshold: float = 1e-4  # plateau: least change that counts as improvement
    threshold_mode: Literal["rel", "abs"] = "rel"  # plateau: relative or absolute threshold
    cooldown: int = 0  # plateau: epochs to wait after a decay
    min_lr: float = 0.0  # plateau/cosine: the head's LR floor (a backbone at backbone_lr_mult x gets the floor x it)
    pct_start: float = 0.3  # onecycle: share of steps spent warming up


@dataclass(frozen=True)
class AugmentConfig:
    crop_padding: int = 0  # pixels of zero padding for random crop; 0 = no crop
    flip: bool = False  # random horizontal flip, p = 0.5
    # random-resized crop (the usual fine-tuning augmentation): a region of a random share of the image's area
    # (drawn from resized_crop_scale) and aspect ratio in [3/4, 4/3], resized back to the full size
    random_resized_crop: bool = False
    resized_crop_scale: tuple[float, float] = (0.08, 1.0)  # share of the image's area the crop covers
    brightness: float = 0.0  # colour jitter: factor drawn from [1-b, 1+b]
    contrast: float = 0.0  # colour jitter: factor drawn from [1-c, 1+c]
    saturation: float = 0.0  # colour jitter: factor drawn from [1-s, 1+s]
    hue: float = 0.0  # colour jitter: hue shift drawn from [-h, h] turns (<= 0.5)


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0  # model init, shuffling and augmentation
    epochs: int = 50  # passes over the training set (document 004 step 1)
    batch_size: int = 64  # training images per step
    eval_batch_size: int = 1000  # images per evaluation batch
    precision: Precision = "auto"  # auto = bf16 on CUDA with bf16 support, else fp32
    channels_last: bool = True  # NHWC memory format for conv layers
    device: str = "auto"  # auto = cuda if available, else cpu; or cpu, cuda, cuda:1, mps
    threads: int = 0  # torch intra-op threads on CPU; 0 = leave torch's default
    diverge_factor: float = (
        3.0  # diverged when train loss > factor x the larger of ln(classes) and the first batch's loss, or non-finite
    )
    out_dir: str = ""  # where best.pt / last.pt go; "" = no checkpoints
    # epochs between saves of the run's full state (weights, optimizer, schedule, RNG, history) to
    # out_dir/state-seed<seed>.pt, from which a retried trial continues; 0 = never
    state_every: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# --------------------------------------------------------------------------- key/type machinery


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _leaf_types(cls: type = TrainConfig, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> annotated type, for every leaf field."""
    out: dict[str, Any] = {}
    for name, tp in _hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(_leaf_types(tp, f"{prefix}{name}."))  # type: ignore[arg-type]
            continue
        out[f"{prefix}{name}"] = tp
        args = typing.get_args(tp)
        if typing.get_origin(tp) is tuple and Ellipsis not in args:  # a fixed-length list: each position a key too
            out.update({f"{prefix}{name}.{i}": a for i, a in enumerate(args)})  # model.dropout.2 = after conv4
    return out


def allowed_keys() -> list[str]:
    """Every dotted key that :func:`apply_overrides` accepts."""
    return sorted(_leaf_types())


def describe_type(tp: Any) -> str:
    """Human words for a field type, used in error messages."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe_type(args[0])}"
        return f"a list of {len(args)} {describe_type(args[0])}"
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}.get(tp, str(tp))


def _parse_scalar(text: str) -> Any:
    """Read a command-line value: true/false, int, float, list or string."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if text.strip().startswith("[") and text.strip().endswith("]"):
        inner = text.strip()[1:-1]
        return [_parse_scalar(p) for p in inner.split(",") if p.strip()]
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


_DEVICE_RE = r"auto|cpu|mps|cuda(:[0-9]+)?"
_BAD = object()  # what a scalar coercer returns for a value of the wrong type


def _as_bool(v: Any) -> Any:
    return v if isinstance(v, bool) else _BAD


def _as_int(v: Any) -> Any:
    if isinstance(v, bool):
        return _BAD
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v if isinstance(v, int) else _BAD


def _as_float(v: Any) -> Any:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else _BAD


def _as_str(v: Any) -> Any:
    return v if isinstance(v, str) else _BAD


_SCALARS = {bool: _as_bool, int: _as_int, float: _as_float, str: _as_str}


def _coerce_tuple(key: str, value: Any, tp: Any, bad: ConfigError) -> tuple[Any, ...]:
    """A list for a tuple field: any length for ``tuple[X, ...]``; one value fills every position."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise bad
    args = typing.get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(key, v, args[0]) for v in value)
    if len(value) == 1 and len(args) > 1:  # one value for every position
        value = list(value) * len(args)
    if len(value) != len(args):
        raise bad
    return tuple(_coerce(key, v, a) for v, a in zip(value, args, strict=True))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against ``tp`` and convert it; raise ConfigError naming key and type."""
    bad = ConfigError(f"{key}: got {value!r}, expected {describe_type(tp)}", key)
    if isinstance(value, str) and tp is not str:
        value = _parse_scalar(value)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is tuple:
        return _coerce_tuple(key, value, tp, bad)
    out = _SCALARS[tp](value) if tp in _SCALARS else _BAD
    if out is _BAD:
        raise bad
    return out


def _unknown_key(key: str) -> ConfigError:
    """ "did you mean", then only the keys of the group the key names (all of them fill 17 lines)."""
    keys = allowed_keys()
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    group = key.split(".")[0] + "."
    same = [k for k in keys if k.startswith(group)]
    if same:
        return ConfigError(f"unknown config key {key!r}.{hint} Keys of {group[:-1]}: {', '.join(same)}", key)
    groups = sorted({k.split(".")[0] for k in keys if "." in k})
    top = [k for k in keys if "." not in k]
    listed = f"top-level keys: {', '.join(top)}; groups: {', '.join(groups)}"
    return ConfigError(f"unknown config key {key!r}.{hint} Allowed {listed}", key)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``; dotted keys pass through."""
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        for leaf, value in (flatten(v, f"{key}.") if isinstance(v, Mapping) else {key: v}).items():
            if leaf in out:
                raise ConfigError(f"{leaf} is given twice (as a dotted key and nested, or twice); keep one", leaf)
            out[leaf] = value
    return out


def apply_overrides(config: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """Return ``config`` with dotted-key overrides applied, each checked for key and type.

    Values may be typed (from YAML) or strings (from ``--set key=value``). Nested mappings
    (``{"optim": {"lr": 1e-3}}``) are accepted too.
    """
    leaf = _leaf_types()
    for key, value in _fold_label_files(flatten(overrides)).items():
        if key not in leaf:
            raise _unknown_key(key)
        config = _replace(config, key.split("."), _coerce(key, value, leaf[key]))
    validate(config)
    return config


def _fold_label_files(flat: dict[str, Any]) -> dict[str, Any]:
    """``data: {labels: {train: a.csv, val: b.csv}}`` (or ``data.labels.train=a.csv``) is the text
    ``data.labels: train=a.csv,val=b.csv``, the one form ``DataConfig.labels`` holds."""
    splits = {k: v for k, v in flat.items() if k.startswith("data.labels.")}
    if not splits:
        return flat
    out = {k: v for k, v in flat.items() if k not in splits}
    out["data.labels"] = ",".join(f"{k.removeprefix('data.labels.')}={v}" for k, v in splits.items())
    return out


def _replace(obj: Any, path: list[str], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    if len(path) == 2 and path[1].isdigit():  # one position of a fixed-length list
        items = list(getattr(obj, path[0]))
        items[int(path[1])] = value
        return dataclasses.replace(obj, **{path[0]: tuple(items)})
    child = _replace(getattr(obj, path[0]), path[1:], value)
    return dataclasses.replace(obj, **{path[0]: child})


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["optim.lr=1e-3"]`` -> ``{"optim.lr": "1e-3"}``; a missing ``=`` is a ConfigError."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=5e-4")
        out[key.strip()] = value
    return out


def validate(config: TrainConfig) -> None:
    """Range checks that types alone cannot express."""
    for ok, message in _run_checks(config) + _training_checks(config):
        if not ok:
            raise ConfigError(message, message.split(" ")[0])


def _run_checks(config: TrainConfig) -> list[tuple[bool, str]]:
    """The run, the data and the model."""
    return [
        (config.epochs >= 1, "epochs must be >= 1"),
        (config.batch_size >= 1, "batch_size must be >= 1"),
        (config.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
        (0.0 <= config.data.val_fraction < 1.0, "data.val_fraction must be in [0, 1)"),
        (config.data.train_subset >= 0, "data.train_subset must be >= 0 (0 = all)"),
        (config.data.val_subset >= 0, "data.val_subset must be >= 0 (0 = all)"),
        (config.data.test_subset >= 0, "data.test_subset must be >= 0 (0 = all)"),
        (config.data.image_size == 0 or config.data.image_size >= 8, "data.image_size must be 0 (auto) or >= 8 pixels"),
        (
            config.data.resize == 0 or config.data.resize >= config.data.image_size,
            "data.resize must be 0 (auto) or >= data.image_size (it is the shorter side before the centre crop)",
        ),
        (0.0 <= config.data.device_budget <= 1.0, "data.device_budget must be in [0, 1] (a share of the device's free memory)"),
        (
            re.fullmatch(
                r"(?i)\s*(|prefix|[^=,]+\.csv|(train|val|test)\s*=[^=,]+\.csv(\s*,\s*(train|val|test)\s*=[^=,]+\.csv)*)\s*",
                config.data.labels,
            )
            is not None
            and ("=" not in config.data.labels or re.search(r"(^|,)\s*train\s*=", config.data.labels) is not None),
            "data.labels must be '' (class folders), prefix (a file name's leading letters are its class), FILE.csv "
            "(rows of path,label) or train=A.csv,val=B.csv,test=C.csv (val and test optional)",
        ),
        (
            config.data.labels == "" or config.data.dataset == "folder",
            "data.labels needs data.dataset=folder (it labels own images)",
        ),
        (all(0.0 <= p < 1.0 for p in config.model.dropout), "model.dropout values must be in [0, 1)"),
        (0.0 <= config.model.head_dropout < 1.0, "model.head_dropout must be in [0, 1)"),
        (
            config.model.head_dropout == 0 or config.model.name == "efficientnet_lite0",
            "model.head_dropout applies to efficientnet_lite0 only (cifar_alexnet has model.dropout)",
        ),
        (0 <= config.seed < 2**32, "seed must be in [0, 2**32) (torch's and numpy's seed range)"),
        (0 <= config.data.split_seed < 2**32, "data.split_seed must be in [0, 2**32)"),
        (config.threads >= 0, "threads must be >= 0 (0 = torch's default)"),
        (config.state_every >= 0, "state_every must be >= 0 (0 = never)"),
        (re.fullmatch(_DEVICE_RE, config.device) is not None, "device must be auto, cpu, cuda, cuda:N or mps"),
    ]


def _training_checks(config: TrainConfig) -> list[tuple[bool, str]]:
    """The optimizer, schedule, augmentation and transfer settings."""
    checks: list[tuple[bool, str]] = [
        (config.optim.lr > 0, "optim.lr must be > 0"),
        (0.0 <= config.optim.beta1 < 1.0, "optim.beta1 must be in [0, 1)"),
        (0.0 <= config.optim.beta2 < 1.0, "optim.beta2 must be in [0, 1)"),
        (config.sched.gamma > 0, "sched.gamma must be > 0"),
        (all(m >= 1 for m in config.sched.milestones), "sched.milestones must be epochs >= 1"),
        (config.sched.cooldown >= 0, "sched.cooldown must be >= 0"),
        (config.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (0.0 <= config.optim.momentum < 1.0, "optim.momentum must be in [0, 1)"),
        (config.sched.step_size >= 1, "sched.step_size must be >= 1"),
        (0.0 < config.sched.factor < 1.0, "sched.factor must be in (0, 1)"),
        (config.sched.patience >= 0, "sched.patience must be >= 0"),
        (config.sched.min_lr >= 0.0, "sched.min_lr must be >= 0"),
        (
            config.sched.name not in ("plateau", "cosine") or config.sched.min_lr <= config.optim.lr,
            "sched.min_lr must not exceed optim.lr (it is the floor the schedule decays to)",
        ),
        (config.sched.threshold >= 0, "sched.threshold must be >= 0"),
        (0.0 < config.sched.pct_start < 1.0, "sched.pct_start must be in (0, 1)"),
        (list(config.sched.milestones) == sorted(config.sched.milestones), "sched.milestones must increase"),
        (config.augment.crop_padding >= 0, "augment.crop_padding must be >= 0 pixels"),
        (
            0.0 < config.augment.resized_crop_scale[0] <= config.augment.resized_crop_scale[1] <= 1.0,
            "augment.resized_crop_scale must be [low, high] with 0 < low <= high <= 1 (shares of the image's area)",
        ),
        (0.0 <= config.augment.hue <= 0.5, "augment.hue must be in [0, 0.5]"),
        (config.diverge_factor > 1.0, "diverge_factor must be > 1"),
        (config.optim.backbone_lr_mult > 0, "optim.backbone_lr_mult must be > 0"),
        (config.model.unfreeze_epoch >= 0, "model.unfreeze_epoch must be >= 0 (0 = never)"),
        (
            config.model.unfreeze_epoch == 0 or config.model.freeze == "backbone",
            "model.unfreeze_epoch needs model.freeze=backbone",
        ),
    ]
    for name in ("brightness", "contrast", "saturation"):
        checks.append((0.0 <= getattr(config.augment, name) <= 1.0, f"augment.{name} must be in [0, 1]"))
    return checks


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Nested plain dict (tuples become lists), for YAML/JSON and checkpoints."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(config))  # type: ignore[no-any-return]


def config_from_dict(mapping: Mapping[str, Any]) -> TrainConfig:
    """Inverse of :func:`config_to_dict`; validated like overrides."""
    return apply_overrides(TrainConfig(), mapping)

import dataclasses
import typing

import pytest

from studyrunner.config import (
    ConfigError,
    TrainConfig,
    allowed_keys,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    parse_assignments,
)
from studyrunner.engine.models import MODELS


def test_defaults_are_documents_values():
    cfg = TrainConfig()
    assert cfg.epochs == 50 and cfg.model.name == "cifar_alexnet" and cfg.model.batchnorm is False
    assert cfg.sched.milestones == (30, 80) and cfg.sched.step_size == 25


def test_typed_and_string_overrides():
    cfg = apply_overrides(
        TrainConfig(),
        {"optim.lr": "5e-4", "model.batchnorm": "true", "epochs": "7", "sched.milestones": "[5, 80, 100]", "optim.name": "adam"},
    )
    assert cfg.optim.lr == 5e-4 and cfg.model.batchnorm is True and cfg.epochs == 7
    assert cfg.sched.milestones == (5, 80, 100) and cfg.optim.name == "adam"
    nested = apply_overrides(TrainConfig(), {"optim": {"lr": 0.1}, "data": {"train_subset": 100}})
    assert nested.optim.lr == 0.1 and nested.data.train_subset == 100


def test_config_is_frozen_and_overrides_return_new_object():
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3  # type: ignore[misc]
    assert apply_overrides(cfg, {"epochs": 3}).epochs == 3 and cfg.epochs == 50


def test_dropout_accepts_one_value_for_all_positions_or_four():
    assert apply_overrides(TrainConfig(), {"model.dropout": 0.5}).model.dropout == (0.5,) * 4
    cfg = apply_overrides(TrainConfig(), {"model.dropout": [0.3, 0.3, 0.1, 0.0]})
    assert cfg.model.dropout == (0.3, 0.3, 0.1, 0.0)
    with pytest.raises(ConfigError, match="model.dropout.*list of 4"):
        apply_overrides(TrainConfig(), {"model.dropout": [0.3, 0.3]})


def test_unknown_key_suggests_one_key_and_lists_its_group_only():
    with pytest.raises(ConfigError) as exc:
        apply_overrides(TrainConfig(), {"optim.lrr": 1e-3})
    msg = str(exc.value)
    assert "'optim.lrr'" in msg and "Did you mean optim.lr?" in msg and "optim.momentum" in msg
    assert "sched.patience" not in msg and len(msg) < 300  # one group, not all 64 keys
    with pytest.raises(ConfigError, match=r"Allowed top-level keys: .*epochs.*; groups: augment, data, model, optim, sched"):
        apply_overrides(TrainConfig(), {"epocs": 3})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("optim.lr", "fast", "optim.lr: got 'fast', expected a finite number"),
        ("epochs", 2.5, "epochs: got 2.5, expected an integer"),
        ("model.batchnorm", "maybe", "expected true or false"),
        ("optim.name", "lion", "one of 'sgd', 'adam', 'adamw', 'rmsprop'"),
        ("sched.threshold_mode", "relative", "one of 'rel', 'abs'"),
        ("data.dataset", "imagenet", "one of 'cifar10', 'folder'"),
    ],
)
def test_wrong_type_or_choice_names_key_and_expected_type(key, value, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(TrainConfig(), {key: value})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"optim.lr": 0}, "optim.lr must be > 0"),
        ({"data.val_fraction": 1.5}, "val_fraction must be in"),
        ({"model.dropout": 1.0}, "dropout values must be in"),
        ({"sched.milestones": [80, 30]}, "milestones must increase"),
        ({"augment.hue": 0.7}, "hue must be in"),
        ({"epochs": 0}, "epochs must be >= 1"),
    ],
)
def test_impossible_values_are_refused(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        apply_overrides(TrainConfig(), overrides)


def test_parse_assignments():
    assert parse_assignments(["optim.lr=1e-3", "x=a=b"]) == {"optim.lr": "1e-3", "x": "a=b"}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_assignments(["optim.lr"])


def test_round_trip_through_plain_dict():
    cfg = apply_overrides(TrainConfig(), {"model.dropout": [0.3, 0.3, 0.1, 0.0], "sched.name": "plateau"})
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_model_names_match_registry():
    literal = typing.get_type_hints(type(TrainConfig().model))["name"]
    assert set(typing.get_args(literal)) == set(MODELS)


def test_allowed_keys_cover_the_required_ones():
    required = {
        "seed",
        "epochs",
        "batch_size",
        "data.dataset",
        "data.path",
        "data.train_subset",
        "data.val_fraction",
        "data.image_size",
        "model.name",
        "model.batchnorm",
        "model.dropout",
        "optim.name",
        "optim.lr",
        "optim.momentum",
        "optim.weight_decay",
        "sched.name",
        "sched.patience",
        "sched.threshold_mode",
        "augment.crop_padding",
        "augment.flip",
        "precision",
        "device",
    }
    assert required <= set(allowed_keys())


def test_lr_floor_is_checked_only_where_a_schedule_decays_to_it():
    base = {"optim.lr": 1e-3, "sched.min_lr": 1e-2}
    assert apply_overrides(TrainConfig(), {**base, "sched.name": "step"}).sched.min_lr == 1e-2  # unused there
    for name in ("cosine", "plateau"):
        with pytest.raises(ConfigError, match="sched.min_lr must not exceed optim.lr"):
            apply_overrides(TrainConfig(), {**base, "sched.name": name})
    with pytest.raises(ConfigError, match="sched.min_lr must be >= 0"):
        apply_overrides(TrainConfig(), {"sched.min_lr": -1.0})


def test_one_position_of_a_fixed_length_list_is_a_key_of_its_own():
    cfg = apply_overrides(TrainConfig(), {"model.dropout": [0.5, 0.5, 0.5, 0.5], "model.dropout.2": "0.1"})
    assert cfg.model.dropout == (0.5, 0.5, 0.1, 0.5)
    assert "model.dropout.3" in allowed_keys() and "model.dropout.4" not in allowed_keys()
    with pytest.raises(ConfigError, match="model.dropout.4"):
        apply_overrides(TrainConfig(), {"model.dropout.4": 0.1})
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        apply_overrides(TrainConfig(), {"model.dropout.0": 1.5})

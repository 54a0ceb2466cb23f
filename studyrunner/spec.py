"""Reading YAML files into configurations; every error names the file (and line where known)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, TrainConfig, apply_overrides
from .errors import StudyrunnerError

__all__ = ["SpecError", "load_yaml", "load_train_config"]


class SpecError(StudyrunnerError):
    """A YAML file that cannot be used; the message names the file, line and key."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing file or a syntax error names file and line."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{p}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{p}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def load_train_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a YAML file of (nested or dotted) config keys, then ``overrides``.

    A sweep file is accepted too: its fixed ``train:`` section is used.
    """
    cfg = TrainConfig()
    if path is not None:
        data = load_yaml(path)
        if "space" in data or "study" in data:
            data = data.get("train") or {}
        try:
            cfg = apply_overrides(cfg, data)
        except ConfigError as exc:
            raise SpecError(f"{path}: {exc}") from None
    return apply_overrides(cfg, overrides or {})

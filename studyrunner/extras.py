"""Optional extras (``pretrained``, ``postgres``, ...) are imported through ``require``, whose error
names the extra to install, in the manner of Optuna's ``_imports.try_import``; nothing else in
studyrunner catches an ImportError."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from studyrunner.config import ConfigError

__all__ = ["MissingExtra", "require", "available"]


class MissingExtra(ConfigError):
    """An optional package that the configuration needs is not installed; the message says which
    extra brings it."""


def require(module: str, extra: str, needed_for: str, package: str = "") -> ModuleType:
    """``import module``, or ``MissingExtra`` saying that ``needed_for`` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        name = package or (exc.name or module).split(".")[0]
        raise MissingExtra(
            f"{needed_for} needs the package {name}, in studyrunner's {extra!r} extra: "
            f'pip install -e ".[{extra}]" in the project folder (or pip install {name})'
        ) from None


def available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False

"""Lazy re-exports for the package and its wings: ``from studyrunner.search import run_study``
imports ``search/driver.py`` (and Optuna) on first use only, so a command that needs neither torch
nor Optuna never loads them. Each wing's ``__init__`` names its public API in ``__all__`` and says
in which module each name lives; type checkers read the same names from its ``TYPE_CHECKING`` block.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["exports"]


def exports(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each public name loaded from ``homes[name]``
    (a module of the package) when first asked for."""

    def getattr_(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)

    def dir_() -> list[str]:
        return sorted(homes)

    return getattr_, dir_

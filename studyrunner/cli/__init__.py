"""The ``studyrunner`` command line (typer): each command a few lines over a library function."""

from typing import TYPE_CHECKING

from studyrunner.lazy import exports

if TYPE_CHECKING:
    from studyrunner.cli.main import (
        app,
    )

__all__ = [
    "app",
]
_HOMES = {
    "app": "main",
}
__getattr__, __dir__ = exports(__name__, _HOMES)

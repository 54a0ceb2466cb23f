"""Files written whole or not at all: a reader (another worker, a report) sees the old file or the
new one, never half of one, and a crash mid-write leaves the last whole file in place."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` into a temporary file beside ``path`` (same file system), then rename it over
    ``path``; the folder is created when missing. The temporary name carries the process id, so two
    processes writing the same file at once do not share one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

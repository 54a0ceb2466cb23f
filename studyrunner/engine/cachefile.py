"""Cache files of tensors (decoded images, a frozen backbone's features): written atomically with a
checksum of their content, read back only when their key matches and the checksum verifies. A
damaged file is reported on stderr and rebuilt, never trained on."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from studyrunner.files import atomic_write

__all__ = ["checksum", "load", "save"]

log = logging.getLogger("studyrunner")


def checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-1 over the tensors' names, dtypes, shapes and bytes."""
    h = hashlib.sha1()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def load(path: Path, key: str) -> dict[str, Any] | None:
    """The cached blob at ``path`` when it holds ``key`` and its content verifies, else None."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, weights_only=True)
    except Exception as exc:
        log.warning("cache file %s is unreadable (%s); rebuilding it", path, type(exc).__name__)
        return None
    if not isinstance(blob, dict) or blob.get("key") != key or "checksum" not in blob:
        return None  # stale (its source changed) or written by an older studyrunner
    tensors = {k: v for k, v in blob.items() if isinstance(v, torch.Tensor)}
    if blob["checksum"] != checksum(tensors):
        log.warning("cache file %s failed its checksum (damaged on disk); rebuilding it", path)
        return None
    return blob


def save(path: Path, key: str, tensors: Mapping[str, torch.Tensor], **extra: Any) -> None:
    """Write atomically: a concurrent reader sees the old file or the new one, never half of one."""
    cpu = {k: v.detach().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: torch.save({"key": key, "checksum": checksum(cpu), **cpu, **extra}, tmp))

"""The machine a figure came from: CPU model and the flags that decide its speed, GPU, versions.
Benchmarks print it; every study's MLflow parent run carries it as tags."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch

__all__ = ["machine", "environment_tags"]


def machine() -> str:
    """The CPU model, the flags that decide its speed here (AVX2, AVX-512, AVX512-BF16, AMX) and the GPU, if any."""
    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "unknown CPU")
    words = set(text.split())
    flags: list[str] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in words] or ["no avx2/avx512"]
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{model} ({os.cpu_count()} cores; {', '.join(flags)}){gpu}"


def environment_tags() -> dict[str, str]:
    """Tags that keep a study's figures with the machine and software that produced them."""
    cuda = torch.version.cuda or "none"
    return {
        "env.machine": machine(),
        "env.python": platform.python_version(),
        "env.torch": torch.__version__,
        "env.cuda": cuda if torch.cuda.is_available() else f"{cuda} (no GPU)",
        "env.gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
    }

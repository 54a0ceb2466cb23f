"""The small text helpers every report shares: markdown tables, percentages, mean ± sd."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["md_table", "pct", "is_accuracy", "value_text", "mean_sd", "num"]


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; None becomes '-'."""

    def cell(v: Any) -> str:
        return "-" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(v: float | None, digits: int = 2) -> str | None:
    """An accuracy (a fraction) as the reports write every accuracy: a percentage, 2 decimals (92.41%)."""
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f}%"


def is_accuracy(metric: str) -> bool:
    """Whether ``metric`` is an accuracy (val_acc, test_acc, best_val_acc, val_acc_cat ...) and so
    written as a percentage; a gap between two accuracies is a difference, in points."""
    return "acc" in metric and "gap" not in metric


def value_text(v: float | None, metric: str) -> str | None:
    """A value of ``metric``: a percentage for an accuracy, else 4 decimals."""
    if v is None:
        return None
    return pct(v) if is_accuracy(metric) else f"{v:.4f}"


def mean_sd(values: Sequence[float], scale: float = 100.0, digits: int = 2, unit: str = "") -> str:
    """'mean ± sd' of accuracies x 100 (``unit`` "%" after the mean: '61.00% ± 1.41', the sd in
    points) or of gaps in points; one value has no spread; none is '-'."""
    if not values:
        return "-"
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{scale * m:.{digits}f}{unit}"
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{scale * m:.{digits}f}{unit} ± {scale * sd:.{digits}f}"


def num(v: Any) -> str:
    """A parameter value as the reports print it: floats to 3 significant digits, the rest as they are."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)

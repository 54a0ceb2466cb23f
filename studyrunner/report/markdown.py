"""Markdown reports (and PNG plots beside them) rendered from plain results.

Imports neither optuna nor mlflow: ``report.results`` extracts, this module renders, so a report is
a pure function of the stored studies and the same results always give the same markdown.
Each plot has a pure "info" function (the numbers) and a thin matplotlib renderer. This module
renders sweep reports and holds the shared helpers; the narrative report is ``narrative_md.py``'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from studyrunner import plots
from studyrunner.report.results import StudyResult
from studyrunner.states import TrialState

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "md_table",
    "effects",
    "render_sweep_report",
    "history_info",
    "params_info",
    "curves_info",
    "pareto_section",
    "spend_info",
    "spend_table",
    "EFFECT_BINS",
]

EFFECT_BINS = 4  # numeric parameters: at most this many quantile bins (decades for log ranges)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; None becomes '-'."""

    def cell(v: Any) -> str:
        return "-" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(v: float | None, digits: int = 1) -> str | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f}%"


def mean_sd(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """'mean ± sd' in points (accuracies x 100); one value has no spread; none is '-'."""
    if not values:
        return "-"
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{scale * m:.{digits}f}"
    sd = (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{scale * m:.{digits}f} ± {scale * sd:.{digits}f}"


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_num(v)}" for k, v in sorted(p.items())) or "-"


# --------------------------------------------------------------------------- sweep studies


def summary_rows(r: StudyResult) -> list[list[Any]]:
    counts: dict[str, int] = {}
    for t in r.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    best = r.ranked()[0] if r.complete else None
    return [
        [
            r.name,
            len(r.trials),
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
            sum(len(t.history) for t in r.trials),
            f"{sum(t.duration_s or 0 for t in r.trials) / 60:.1f}",
            None if best is None else f"{best.value:.4f}",
            None if best is None else _params(best.params),
        ]
    ]


SUMMARY_HEADERS = ["study", "trials", "by state", "epochs", "wall min", "best value", "best parameters"]


def leaderboard(r: StudyResult, top: int = 10) -> str:
    rows = []
    for t in r.ranked()[:top]:
        train, val = t.metric("final_train_acc"), t.metric("final_val_acc")
        rows.append(
            [
                t.number,
                _params(t.params),
                f"{t.value:.4f}",
                pct(t.metric("best_val_acc")),
                pct(val),
                pct(train),
                None if train is None or val is None else f"{100 * (train - val):.1f}",
                _num(t.metric("best_epoch")),
                pct(t.test_acc),
            ]
        )
    return md_table(
        [
            "trial",
            "parameters",
            "value",
            "best val acc",
            "final val acc",
            "final train acc",
            "gap (pts)",
            "best epoch",
            "test acc",
        ],
        rows,
    )


def _bins(values: pd.Series, kind: str) -> pd.Series:
    if kind == "log-float":
        decade = values.map(lambda v: math.floor(math.log10(v)))
        return decade.map(lambda d: f"[1e{d}, 1e{d + 1})")
    if values.nunique() <= EFFECT_BINS:
        return values.map(_num)
    cut = pd.qcut(values, EFFECT_BINS, duplicates="drop")
    return cut.map(lambda iv: f"[{_num(iv.left)}, {_num(iv.right)}]").astype(str)


def effects(r: StudyResult) -> dict[str, pd.DataFrame]:
    """Per parameter: trials, finished, diverged, mean / best value of complete trials, per choice
    or numeric bin (decades for log ranges)."""
    rows = [{"state": t.state, "value": t.value, **t.params} for t in r.trials if t.state != TrialState.RUNNING]
    df = pd.DataFrame(rows)
    out: dict[str, pd.DataFrame] = {}
    best = "min" if r.direction == "minimize" else "max"
    for param, kind in sorted(r.distributions.items()):
        if param not in df:
            continue
        sub = df[df[param].notna()].copy()
        sub["group"] = sub[param].map(_num) if kind == "categorical" else _bins(sub[param].astype(float), kind)
        sub["order"] = sub[param] if kind != "categorical" else sub[param].map(str)
        done = sub[sub.state == TrialState.COMPLETE]
        table = (
            pd.DataFrame(
                {
                    "trials": sub.groupby("group").size(),
                    "complete": done.groupby("group").size(),
                    "pruned": sub[sub.state == TrialState.PRUNED].groupby("group").size(),
                    "diverged": sub[sub.state == TrialState.DIVERGED].groupby("group").size(),
                    "mean value": done.groupby("group")["value"].mean(),
                    "best value": done.groupby("group")["value"].agg(best),
                    "order": sub.groupby("group")["order"].min(),
                }
            )
            .sort_values("order")
            .drop(columns="order")
        )
        out[param] = table.fillna({"complete": 0, "pruned": 0, "diverged": 0})
    return out


def _effect_md(table: pd.DataFrame, param: str) -> str:
    rows = [
        [
            g,
            int(r["trials"]),
            int(r["complete"]),
            int(r["pruned"]),
            int(r["diverged"]),
            None if pd.isna(r["mean value"]) else f"{r['mean value']:.4f}",
            None if pd.isna(r["best value"]) else f"{r['best value']:.4f}",
        ]
        for g, r in table.iterrows()
    ]
    return md_table([param, "trials", "complete", "pruned", "diverged", "mean value", "best value"], rows)


def history_info(r: StudyResult) -> dict[str, list[float]]:
    """Optimisation history: each finished trial's value and the best so far."""
    xs: list[float] = []
    ys: list[float] = []
    best: list[float] = []
    better = min if r.direction == "minimize" else max
    for t in sorted(r.complete, key=lambda t: t.number):
        xs.append(float(t.number))
        ys.append(float(t.value))  # type: ignore[arg-type]
        best.append(ys[-1] if not best else better(best[-1], ys[-1]))
    return {"trial": xs, "value": ys, "best": best}


def curves_info(r: StudyResult, top: int = 3) -> dict[str, list[dict[str, Any]]]:
    """Learning curves of the top trials and of every diverged trial."""
    chosen = {f"trial {t.number} (top)": t.history for t in r.ranked()[:top] if t.history}
    chosen.update({f"trial {t.number} (diverged)": t.history for t in r.trials if t.state == TrialState.DIVERGED and t.history})
    return chosen


def params_info(r: StudyResult) -> dict[str, tuple[str, list[tuple[Any, float]]]]:
    """Per parameter: its kind and (value, objective) of every complete trial that has it."""
    return {
        p: (r.distributions[p], [(t.params[p], float(t.value or 0.0)) for t in r.complete if p in t.params])
        for p in sorted(r.distributions)
    }


def _save(fig: Figure, path: Path) -> None:
    try:
        fig.savefig(path, dpi=110)
    finally:
        plots.close(fig)


def _plot_params(r: StudyResult, path: Path) -> bool:
    info = params_info(r)
    if not info or not r.complete:
        return False
    _save(plots.params_figure(info, _num), path)
    return True


def save_curves(histories: dict[str, list[dict[str, Any]]], title: str, path: Path) -> bool:
    if not histories:
        return False
    _save(plots.learning_curves(histories, title), path)
    return True


def pareto_section(r: StudyResult) -> list[str]:
    """Multi-objective studies: the trials no other trial beats on every objective."""
    if not r.front:
        return []
    names = [f"{metric} ({'max' if d == 'maximize' else 'min'})" for metric, d in r.objectives]
    on_front = [t for t in r.trials if t.number in r.front and t.values]
    rows = [[t.number, *[_num(v) for v in t.values or []], _params(t.params)] for t in sorted(on_front, key=lambda t: t.number)]
    return [
        "### Pareto front",
        "",
        f"{len(on_front)} trials no other trial beats on every objective; pruning and the tables above use the first.",
        "",
        md_table(["trial", *names, "parameters"], rows),
        "",
    ]


def render_study(r: StudyResult, out: Path | None, gallery: Callable[[str, Path], bool] | None = None) -> str:
    """One study's section: summary, leaderboard, effects, importances, plots (and with ``gallery``,
    the best trial's predictions on validation images)."""
    parts = [
        f"## {r.name}",
        "",
        f"Objective: {', '.join(f'{d} `{m}`' for m, d in r.objectives) or f'{r.direction} `{r.metric}`'}; "
        f"sampler `{r.sampler}`, pruner `{r.pruner}`.",
        "",
        md_table(SUMMARY_HEADERS, summary_rows(r)),
        "",
        "### Leaderboard",
        "",
        leaderboard(r),
        "",
    ]
    parts += pareto_section(r)
    tables = effects(r)
    if tables:
        parts += ["### Parameter effects", ""]
        for param, table in tables.items():
            parts += [_effect_md(table, param), ""]
    if r.importances:
        parts += [
            "### Parameter importances (fANOVA)",
            "",
            md_table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in r.importances.items()]),
            "",
        ]
    if out is not None:
        pngs = []
        info = history_info(r)
        if info["trial"]:
            _save(plots.history_figure(info, f"{r.name}: optimisation history"), out / f"{r.name}_history.png")
            pngs.append(f"![optimisation history]({r.name}_history.png)")
        if save_curves(curves_info(r), f"{r.name}: top and diverged trials", out / f"{r.name}_curves.png"):
            pngs.append(f"![learning curves]({r.name}_curves.png)")
        if _plot_params(r, out / f"{r.name}_params.png"):
            pngs.append(f"![parameter vs objective]({r.name}_params.png)")
        if gallery is not None and r.checkpoint and gallery(r.checkpoint, out / f"{r.name}_predictions.png"):
            caption = "Validation images, predicted (true), best trial's best checkpoint:"
            pngs.append(f"{caption}\n\n![predictions]({r.name}_predictions.png)")
        if pngs:
            parts += ["### Plots", ""] + [p + "\n" for p in pngs]
    return "\n".join(parts)


def spend_info(results: Sequence[StudyResult]) -> dict[str, tuple[list[float], list[float]]]:
    """Per study: epochs trained so far (every trial, pruned and diverged ones too, in trial order)
    against the best complete trial's value by then; a step where the best changes or at the end."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for r in results:
        sign = -1.0 if r.direction == "minimize" else 1.0
        spent, best = 0, None
        xs: list[float] = []
        ys: list[float] = []
        for t in sorted(r.trials, key=lambda t: t.number):
            spent += len(t.history)
            if t in r.complete and (best is None or sign * float(t.value or 0) > sign * best):
                best = float(t.value or 0)
                xs, ys = [*xs, float(spent)], [*ys, best]
        if xs:
            curves[r.name] = (xs + [float(spent)], ys + [ys[-1]])
    return curves


def _epochs(v: float | None) -> int | None:
    return None if v is None else int(v)


def _spent_to(curve: tuple[list[float], list[float]], bar: float, maximize: bool) -> float | None:
    return next((x for x, y in zip(*curve, strict=True) if (y >= bar if maximize else y <= bar)), None)


def spend_table(results: Sequence[StudyResult], tolerance: float = 0.01) -> tuple[list[str], list[list[Any]], float]:
    """The headers and one row per study of ``spend_info`` (epochs spent, best, epochs to its best
    and to within ``tolerance`` of the best of all), and the bar that tolerance sets."""
    curves = spend_info(results)
    maximize = results[0].direction != "minimize"
    overall = (max if maximize else min)((y[-1] for _, y in curves.values()), default=0.0)
    bar = overall - tolerance if maximize else overall + tolerance
    rows = [
        [name, int(x[-1]), f"{y[-1]:.4f}", _epochs(_spent_to((x, y), y[-1], maximize)), _epochs(_spent_to((x, y), bar, maximize))]
        for name, (x, y) in curves.items()
    ]
    headers = ["study", "epochs spent", "best", "epochs to its best", f"epochs to within {tolerance:g} of {overall:.4f}"]
    return headers, rows, bar


def spend_section(results: Sequence[StudyResult], out: Path | None) -> list[str]:
    """Which sweep found better configurations per epoch spent: one figure, one row per study."""
    curves = spend_info(results)
    if len(curves) < 2:
        return []
    headers, rows, bar = spend_table(results)
    parts = ["## Best per epoch spent", "", md_table(headers, rows), ""]
    if out is not None:
        title = f"best {results[0].metric} against epochs trained (pruned and diverged trials included)"
        _save(plots.anytime_figure(curves, bar, title, ylabel=f"best {results[0].metric}"), out / "best_per_epoch.png")
        parts += ["![best per epoch spent](best_per_epoch.png)", ""]
    return parts


def render_sweep_report(
    results: Sequence[StudyResult], out: Path | None, command: str, gallery: Callable[[str, Path], bool] | None = None
) -> str:
    """Several studies side by side (one row each), then one section per study."""
    rows = [row for r in results for row in summary_rows(r)]
    parts = ["# Study report", ""]
    if len(results) > 1:
        parts += ["Studies side by side, one row each.", "", md_table(SUMMARY_HEADERS, rows), ""]
        parts += spend_section(results, out)
    parts += [render_study(r, out, gallery) for r in results]
    parts += ["## Reproduce", "", "```bash", command, "```", ""]
    return "\n".join(parts)


def write(markdown: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "README.md"
    path.write_text(markdown)
    return path

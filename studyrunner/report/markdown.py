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
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from studyrunner import plots
from studyrunner.report.population import population_section
from studyrunner.report.results import StudyResult, TrialResult, importance_min_trials
from studyrunner.report.tables import is_accuracy, md_table, num, pct, value_text
from studyrunner.states import TrialState

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
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
CONFUSION_TABLE_CLASSES = 20  # more classes than this: the confusion matrix as a PNG only (a wider table is unreadable)
STOPPED = (TrialState.PRUNED, TrialState.DIVERGED)  # trials drawn at their last reported value


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={num(v)}" for k, v in sorted(p.items())) or "-"


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
            None if best is None else value_text(best.value, r.metric),
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
                value_text(t.value, r.metric),
                pct(t.metric("best_val_acc")),
                pct(val),
                pct(train),
                None if train is None or val is None else f"{100 * (train - val):.2f}",
                num(t.metric("best_epoch")),
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
        return values.map(num)
    cut = pd.qcut(values, EFFECT_BINS, duplicates="drop")
    return cut.map(lambda iv: f"[{num(iv.left)}, {num(iv.right)}]").astype(str)


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
        sub["group"] = sub[param].map(num) if kind == "categorical" else _bins(sub[param].astype(float), kind)
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


def _effect_md(table: pd.DataFrame, param: str, metric: str) -> str:
    rows = [
        [
            g,
            int(r["trials"]),
            int(r["complete"]),
            int(r["pruned"]),
            int(r["diverged"]),
            None if pd.isna(r["mean value"]) else value_text(float(r["mean value"]), metric),
            None if pd.isna(r["best value"]) else value_text(float(r["best value"]), metric),
        ]
        for g, r in table.iterrows()
    ]
    return md_table([param, "trials", "complete", "pruned", "diverged", "mean value", "best value"], rows)


def _stopped(r: StudyResult) -> list[tuple[TrialResult, float]]:
    """Pruned and diverged trials with their last reported value, in trial order (those that
    reported none, a first epoch that diverged, are left out)."""
    found = [(t, t.last_reported(r.metric)) for t in sorted(r.trials, key=lambda t: t.number) if t.state in STOPPED]
    return [(t, v) for t, v in found if v is not None]


def history_info(r: StudyResult) -> dict[str, list[Any]]:
    """Optimisation history: each complete trial's value and the best so far; ``stopped``: each
    pruned or diverged trial as (number, state, last reported value), so a region that was tried
    and stopped does not look unexplored."""
    xs: list[float] = []
    ys: list[float] = []
    best: list[float] = []
    better = min if r.direction == "minimize" else max
    for t in sorted(r.complete, key=lambda t: t.number):
        xs.append(float(t.number))
        ys.append(float(t.value))  # type: ignore[arg-type]
        best.append(ys[-1] if not best else better(best[-1], ys[-1]))
    stopped = [(t.number, str(t.state), v) for t, v in _stopped(r)]
    return {"trial": xs, "value": ys, "best": best, "stopped": stopped}


def curves_info(r: StudyResult, top: int = 3) -> dict[str, list[dict[str, Any]]]:
    """Learning curves of the top trials and of every diverged trial."""
    chosen = {f"trial {t.number} (top)": t.history for t in r.ranked()[:top] if t.history}
    chosen.update({f"trial {t.number} (diverged)": t.history for t in r.trials if t.state == TrialState.DIVERGED and t.history})
    return chosen


def params_info(r: StudyResult) -> dict[str, tuple[str, list[tuple[Any, float, str]]]]:
    """Per parameter: its kind and (value, metric, state) of every trial that has it, complete ones
    at their value and pruned or diverged ones at their last reported value, in trial order."""
    shown = sorted([(t, float(t.value or 0.0)) for t in r.complete] + _stopped(r), key=lambda tv: tv[0].number)
    return {
        p: (kind, [(t.params[p], v, str(t.state)) for t, v in shown if p in t.params])
        for p, kind in sorted(r.distributions.items())
    }


def importance_info(r: StudyResult) -> dict[str, Any]:
    """What the importance section shows: ``complete`` trials (imported ones count, as for fANOVA),
    the trials it ``needs`` (``results.importance_min_trials``) and per parameter its importance,
    None for one that never varied across the complete trials (fANOVA says 0 or leaves it out)."""
    done = [t for t in r.trials if t.state in (TrialState.COMPLETE, TrialState.IMPORTED) and t.value is not None]
    fixed = [
        p for p in sorted(r.distributions) if done and all(p in t.params for t in done) and len({t.params[p] for t in done}) < 2
    ]
    found: dict[str, float | None] = {k: v for k, v in r.importances.items() if k not in fixed}
    found.update(dict.fromkeys(fixed))
    return {"complete": len(done), "needs": importance_min_trials(len(r.distributions)), "importances": found}


def importance_section(r: StudyResult) -> list[str]:
    """fANOVA importances, or why there are none: too few complete trials for the numbers to mean anything."""
    if not r.distributions:
        return []
    info = importance_info(r)
    head = ["### Parameter importances (fANOVA)", ""]
    if info["complete"] < info["needs"]:
        return head + [f"Importances need at least {info['needs']} complete trials (this study has {info['complete']}).", ""]
    if not info["importances"]:
        return []
    rows = [[k, "did not vary" if v is None else f"{v:.3f}"] for k, v in info["importances"].items()]
    return head + [md_table(["parameter", "importance"], rows), ""]


def confusion_table(classes: Sequence[str], matrix: Sequence[Sequence[int]]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of a confusion matrix: a row per true class, a column per predicted one,
    and each class's recall (correct / images of the class)."""
    names = [c.replace("|", "\\|") for c in classes]
    rows = [[names[i], *row, pct(row[i] / sum(row)) if sum(row) else None] for i, row in enumerate(matrix)]
    return ["true \\ predicted", *names, "recall"], rows


def confusion_section(r: StudyResult, out: Path | None) -> list[str]:
    """The best trial's validation confusion matrix, as its MLflow run stored it: a table with class
    names (up to ``CONFUSION_TABLE_CLASSES`` classes) and, with ``out``, a PNG."""
    head = ["### Validation confusion matrix", ""]
    c = r.confusion
    if not r.tracking_uri:
        return head + ["This study was not tracked (no MLflow store), so no confusion matrix was kept.", ""]
    if c is None:
        why = "no trial completed" if not r.complete else "the best trial's MLflow run holds none"
        return head + [f"No confusion matrix: {why}.", ""]
    parts = head + [f"Best trial {c['trial']}, best-validation weights (first seed); rows: true class, columns: predicted.", ""]
    if len(c["classes"]) <= CONFUSION_TABLE_CLASSES:
        parts += [md_table(*confusion_table(c["classes"], c["matrix"])), ""]
    if out is not None:
        _save(plots.confusion_figure(c["classes"], c["matrix"]), out / f"{r.name}_confusion.png")
        parts += [f"![validation confusion matrix]({r.name}_confusion.png)", ""]
    return parts


def _save(fig: Figure, path: Path) -> None:
    try:
        fig.savefig(path, dpi=110)
    finally:
        plots.close(fig)


def _plot_params(r: StudyResult, path: Path) -> bool:
    info = params_info(r)
    if not any(pts for _, pts in info.values()):
        return False
    _save(plots.params_figure(info, num, r.metric), path)
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
    metrics = [m for m, _ in r.objectives]
    rows = [
        [t.number, *[value_text(v, m) for v, m in zip(t.values or [], metrics, strict=False)], _params(t.params)]
        for t in sorted(on_front, key=lambda t: t.number)
    ]
    return [
        "### Pareto front",
        "",
        f"{len(on_front)} trials no other trial beats on every objective; pruning and the tables above use the first.",
        "",
        md_table(["trial", *names, "parameters"], rows),
        "",
    ]


def _plots_section(r: StudyResult, out: Path, gallery: Callable[[str, Path], bool] | None) -> list[str]:
    """The optimisation history, learning curves, parameters against the metric and predictions, as PNGs."""
    pngs = []
    info = history_info(r)
    if info["trial"] or info["stopped"]:
        _save(plots.history_figure(info, f"{r.name}: optimisation history", r.metric), out / f"{r.name}_history.png")
        pngs.append(f"![optimisation history]({r.name}_history.png)")
    if save_curves(curves_info(r), f"{r.name}: top and diverged trials", out / f"{r.name}_curves.png"):
        pngs.append(f"![learning curves]({r.name}_curves.png)")
    if _plot_params(r, out / f"{r.name}_params.png"):
        pngs.append(f"![parameter vs {r.metric}]({r.name}_params.png)")
    if gallery is not None and r.checkpoint and gallery(r.checkpoint, out / f"{r.name}_predictions.png"):
        caption = "Validation images, predicted (true), best trial's best checkpoint:"
        pngs.append(f"{caption}\n\n![predictions]({r.name}_predictions.png)")
    if not pngs:
        return []
    note = "Pruned and diverged trials are drawn at their last reported value."
    return ["### Plots", "", note, ""] + [p + "\n" for p in pngs]


def render_study(r: StudyResult, out: Path | None, gallery: Callable[[str, Path], bool] | None = None) -> str:
    """One study's section: summary, leaderboard, effects, importances, the best trial's confusion
    matrix, plots (and with ``gallery``, the best trial's predictions on validation images)."""
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
            parts += [_effect_md(table, param, r.metric), ""]
    parts += importance_section(r)
    parts += confusion_section(r, out)
    parts += population_section(r, out)
    if out is not None:
        parts += _plots_section(r, out, gallery)
    return "\n".join(parts)


Curves = dict[str, tuple[list[float], list[float]]]  # study -> (spent so far, best value by then)


def spend_info(results: Sequence[StudyResult], by: Literal["epochs", "seconds"] = "epochs") -> Curves:
    """Per study: epochs (or with ``by="seconds"``, trial seconds) spent so far, every trial, pruned
    and diverged ones too, in trial order, against the best complete trial's value by then; a step
    where the best changes or at the end."""
    cost = TrialResult.seconds if by == "seconds" else (lambda t: float(len(t.history)))
    curves: Curves = {}
    for r in results:
        sign = -1.0 if r.direction == "minimize" else 1.0
        spent, best = 0.0, None
        xs: list[float] = []
        ys: list[float] = []
        for t in sorted(r.trials, key=lambda t: t.number):
            spent += cost(t)
            if t in r.complete and (best is None or sign * float(t.value or 0) > sign * best):
                best = float(t.value or 0)
                xs, ys = [*xs, spent], [*ys, best]
        if xs:
            curves[r.name] = (xs + [spent], ys + [ys[-1]])
    return curves


def _epochs(v: float | None) -> int | None:
    return None if v is None else int(v)


def _seconds(v: float | None) -> str | None:
    return None if v is None else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _spent_to(curve: tuple[list[float], list[float]], bar: float, maximize: bool) -> float | None:
    return next((x for x, y in zip(*curve, strict=True) if (y >= bar if maximize else y <= bar)), None)


def spend_table(results: Sequence[StudyResult], tolerance: float = 0.01) -> tuple[list[str], list[list[Any]], float]:
    """The headers and one row per study of ``spend_info`` by epochs and by seconds (spent, best, to
    its best and to within ``tolerance`` of the best of all), and the bar that tolerance sets."""
    curves, timed = spend_info(results), spend_info(results, "seconds")
    maximize = results[0].direction != "minimize"
    metric = results[0].metric
    overall = (max if maximize else min)((y[-1] for _, y in curves.values()), default=0.0)
    bar = overall - tolerance if maximize else overall + tolerance
    rows = []
    for name, (x, y) in curves.items():
        secs = timed[name]
        best = (_spent_to((x, y), y[-1], maximize), _spent_to(secs, y[-1], maximize))
        near = (_spent_to((x, y), bar, maximize), _spent_to(secs, bar, maximize))
        spent = [name, int(x[-1]), _seconds(secs[0][-1]), value_text(y[-1], metric)]
        rows.append([*spent, _epochs(best[0]), _seconds(best[1]), _epochs(near[0]), _seconds(near[1])])
    within = f"{100 * tolerance:.2f} pts of {pct(overall)}" if is_accuracy(metric) else f"{tolerance:g} of {overall:.4f}"
    headers = ["study", "epochs spent", "seconds spent", "best", "epochs to its best", "seconds to its best"]
    headers += [f"epochs to within {within}", f"seconds to within {within}"]
    return headers, rows, bar


def spend_section(results: Sequence[StudyResult], out: Path | None) -> list[str]:
    """Which sweep found better configurations per epoch and per second spent: a figure each, one row per study."""
    curves = spend_info(results)
    if len(curves) < 2:
        return []
    headers, rows, bar = spend_table(results)
    note = "Seconds: trials' wall times summed (every seed, data loading, test evaluation), pruned and diverged trials included."
    parts = ["## Best per epoch spent (and per second)", "", note, "", md_table(headers, rows), ""]
    if out is not None:
        metric = results[0].metric
        title = f"best {metric} against epochs trained (pruned and diverged trials included)"
        _save(plots.anytime_figure(curves, bar, title, ylabel=f"best {metric}"), out / "best_per_epoch.png")
        title = f"best {metric} against trial seconds (pruned and diverged trials included)"
        timed = plots.anytime_figure(spend_info(results, "seconds"), bar, title, "trial seconds (cumulative)", f"best {metric}")
        _save(timed, out / "best_per_second.png")
        parts += ["![best per epoch spent](best_per_epoch.png)", "", "![best per second spent](best_per_second.png)", ""]
    return parts


def render_sweep_report(
    results: Sequence[StudyResult], out: Path | None, command: str, gallery: Callable[[str, Path], bool] | None = None
) -> str:
    """Several studies side by side (one row each), then one section per study."""
    rows = [row for r in results for row in summary_rows(r)]
    parts = ["# Study report", "", "Accuracies are percentages (2 decimals); gaps between two accuracies are in points.", ""]
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

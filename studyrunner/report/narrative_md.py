"""The narrative report: a document's steps rendered as markdown (with PNG learning curves and
prediction grids beside it), its reported figures beside ours as mean ± sd over seeds, each step's runs
per seed, and one verdict per claim, from a plain :class:`NarrativeResult`; the table, percentage and
plot-saving helpers it shares with the sweep reports are ``markdown.py``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from studyrunner.narrative.spec import Verdict
from studyrunner.report.markdown import CONFUSION_TABLE_CLASSES, confusion_table, save_curves
from studyrunner.report.results import NarrativeResult, StepResult, TrialResult
from studyrunner.report.tables import is_accuracy, md_table, mean_sd, num, pct
from studyrunner.states import TrialState

__all__ = ["render_narrative", "narrative_curves_info"]


def _scale_words(sc: dict[str, Any]) -> str:
    """'30 epochs, 8000 training images, validation fraction 0.04; ' from a scale's overrides."""
    data = sc.get("data", {})
    words = [f"{sc['epochs']} epochs"] if "epochs" in sc else []
    if "train_subset" in data:
        words.append(f"{data['train_subset'] or 'all'} training images")
    if "val_fraction" in data:
        words.append(f"validation fraction {data['val_fraction']}")
    return (", ".join(words) + "; ") if words else "each step's own settings (see its setup); "


def _doc_figures(doc: dict[str, Any]) -> str:
    keys = [("epochs", "epochs"), ("train_acc", "train"), ("val_acc", "val"), ("test_acc", "test")]
    return ", ".join(f"{label} {pct(doc[k]) if k != 'epochs' else doc[k]}" for k, label in keys if k in doc) or "-"


def _figure(values: list[float], metric: str) -> str:
    """Mean ± sd over seeds: an accuracy as a percentage ('61.00% ± 1.41', the sd in points), a gap in points."""
    return mean_sd(values, unit="%" if is_accuracy(metric) else "")


def _ours(step: StepResult) -> list[str]:
    return [_figure(step.values(m), m) for m in ("final_train_acc", "best_val_acc", "final_val_acc", "test_acc", "final_gap")]


def _verdict_row(v: Verdict) -> list[Any]:
    def side(name: str | None, vals: list[float]) -> str:
        return f"{name}: {_figure(vals, v.metric)}" if name else "-"

    diff = None if v.difference is None else f"{100 * v.difference:+.2f} ± {100 * (v.noise or 0):.2f}"
    target = side(v.b, v.b_values) if v.b else "threshold"
    return [v.text, f"`{v.metric}`", side(v.a, v.a_values), target, diff, f"**{v.verdict}**", v.note or ""]


def narrative_curves_info(step: StepResult) -> dict[str, list[dict[str, Any]]]:
    return {f"seed {r.params.get('seed', i)}": r.history for i, r in enumerate(step.runs) if r.history}


def _narrative_head(n: NarrativeResult) -> list[str]:
    seeds = max((len(s.runs) for s in n.steps), default=0)
    return [
        f"# {n.title or n.study} ({n.scale} scale)",
        "",
        n.description,
        "",
        f"Scale `{n.scale}`: {_scale_words(n.scale_config)}up to {seeds} seeds per step; test sets are evaluated once per run. "
        "Figures are mean ± sd over seeds: accuracies in % (2 decimals), their sd and the gap (final train accuracy - "
        "final validation accuracy) in points. The document's figures come from its own runs, at its own scale.",
        "",
    ]


def _steps_table(n: NarrativeResult) -> list[str]:
    def runs(s: StepResult) -> str:
        return f"{sum(r.state == TrialState.COMPLETE for r in s.runs)}/{len(s.runs)}"

    headers = ["step", "document", "ours: final train", "best val", "final val", "test", "gap", "runs"]
    rows = [[s.title, _doc_figures(s.document), *_ours(s), runs(s)] for s in n.steps]
    return ["## Steps: the document's figures beside ours", "", md_table(headers, rows), ""]


def _verdicts_section(n: NarrativeResult) -> list[str]:
    counts = {k: sum(v.verdict == k for v in n.verdicts) for k in ("reproduced", "not reproduced", "inconclusive")}
    headers = ["claim", "metric", "a", "b", "difference (pts)", "verdict", "what the scale can show"]
    return [
        "## Verdicts",
        "",
        "Reproduced when the claimed difference beats its margin by more than twice its standard "
        "error (floored at 0.5 points: two seeds cannot resolve less), not reproduced when it falls short by as "
        "much, inconclusive otherwise.",
        "",
        md_table(headers, [_verdict_row(v) for v in n.verdicts]),
        "",
        f"{counts['reproduced']} reproduced, {counts['not reproduced']} not reproduced, {counts['inconclusive']} inconclusive.",
        "",
    ]


def _joint_section(n: NarrativeResult) -> list[str]:
    """One automatic study per strategy against the hand-tuned steps: what each search spent and
    found, its best configuration trained again with the steps' seeds, and the verdict on it."""
    searched = [s for s in n.steps if s.search is not None]
    if not searched:
        return []
    hand = [s for s in n.steps if s.search is None and s.values("best_val_acc")]
    spent = sum(len(r.history) for s in hand for r in s.runs)
    best_hand = max(hand, key=lambda s: sum(s.values("best_val_acc")) / len(s.values("best_val_acc")), default=None)
    verdicts = {v.a: v for v in n.verdicts}
    rows = []
    for s in searched:
        info, v = s.search or {}, verdicts.get(s.name)
        diff = None if v is None or v.difference is None else f"{100 * v.difference:+.2f} ± {100 * (v.noise or 0):.2f}"
        rows.append(
            [
                s.title,
                f"`{info['study']}`: {info['sampler']}, pruner {info['pruner']}",
                f"{info['complete']}/{info['trials']}",
                info["epochs"],
                pct(info["best_value"]),
                ", ".join(f"{k}={num(val)}" for k, val in sorted((info["params"] or {}).items())) or "-",
                _figure(s.values("best_val_acc"), "best_val_acc"),
                _figure(s.values("test_acc"), "test_acc"),
                diff,
                f"**{v.verdict}**" if v and s.values("best_val_acc") else "not retrained yet",
            ]
        )
    headers = ["strategy", "search", "complete/trials", "epochs spent", "its best (one run)", "best configuration",
               "retrained: best val", "test", "vs best hand-tuned (pts)", "verdict"]  # fmt: skip
    best_line = (
        f"The best hand-tuned step is {best_hand.title}: {_figure(best_hand.values('best_val_acc'), 'best_val_acc')} "
        f"best validation accuracy. The hand-tuned steps in this report trained {spent} epochs."
        if best_hand
        else "No hand-tuned step has finished runs yet."
    )
    return [
        "## One study instead of seven steps",
        "",
        "Each strategy searches all of the steps' knobs at once, at this scale, within its sweep's epoch budget; "
        "its best configuration is then trained again from scratch with the steps' seeds. The verdict compares "
        "that retrained best with the best hand-tuned step under the rule above (margin 0).",
        "",
        best_line,
        "",
        md_table(headers, rows),
        "",
        _joint_summary(searched, verdicts),
        "",
    ]


def _joint_summary(searched: list[StepResult], verdicts: dict[str, Verdict]) -> str:
    judged = [s for s in searched if verdicts.get(s.name) and s.values("best_val_acc")]
    won = [s.title for s in judged if verdicts[s.name].verdict == "reproduced"]
    tied = [s.title for s in judged if verdicts[s.name].verdict == "inconclusive"]
    waiting = [s.title for s in searched if s not in judged]
    tail = f" Not retrained yet: {'; '.join(waiting)}." if waiting else ""
    if won:
        return f"Beats hand-tuning beyond the noise of two seeds: {'; '.join(won)}.{tail}"
    if tied:
        level = "; ".join(tied)
        return f"No strategy beats hand-tuning beyond the noise of two seeds; level with it within that noise: {level}.{tail}"
    if judged:
        return f"No strategy reached the best hand-tuned step: see each search's epochs and best configuration above.{tail}"
    return f"No strategy has been retrained yet.{tail}"


def _run_row(r: TrialResult) -> list[Any]:
    final_lr = None if not r.history else f"{r.history[-1]['lr']:.2e}"
    return [
        r.params.get("seed", "-"),
        r.state,
        len(r.history),
        pct(r.metric("final_train_acc")),
        pct(r.metric("best_val_acc")),
        pct(r.metric("final_val_acc")),
        pct(r.test_acc),
        final_lr,
        r.reason or "",
    ]


def _step_section(s: StepResult, out: Path | None, gallery: Callable[[str, Path], bool] | None) -> list[str]:
    """One step: the document's setup and claim, our runs per seed, learning curves, predictions."""
    headers = ["seed", "state", "epochs", "final train", "best val", "final val", "test", "final lr", "note"]
    parts = [
        f"### {s.title}",
        "",
        f"Document: {s.setup}. Reported: {_doc_figures(s.document)}.",
        "",
        f"Its claim: {s.claim}.",
        "",
    ]
    parts += [md_table(headers, [_run_row(r) for r in s.runs]), ""]
    if out is not None and save_curves(narrative_curves_info(s), s.title, out / f"{s.name}.png"):
        parts += [f"![{s.title}]({s.name}.png)", ""]
    if out is not None and gallery is not None and s.checkpoint and gallery(s.checkpoint, out / f"{s.name}_predictions.png"):
        parts += [
            "Validation images, predicted (true), best run's best checkpoint:",
            "",
            f"![{s.title}: predictions]({s.name}_predictions.png)",
            "",
        ]
    if s.confusion is not None and len(s.confusion["classes"]) <= CONFUSION_TABLE_CLASSES:
        parts += [
            f"Validation confusion matrix of its best run (trial {s.confusion['trial']}; rows: true class, columns: predicted):",
            "",
            md_table(*confusion_table(s.confusion["classes"], s.confusion["matrix"])),
            "",
        ]
    return parts


def render_narrative(
    n: NarrativeResult, out: Path | None, command: str, gallery: Callable[[str, Path], bool] | None = None
) -> str:
    """The document's steps with its figures beside ours, learning curves, one verdict per claim."""
    parts = _narrative_head(n) + _steps_table(n) + _verdicts_section(n) + _joint_section(n)
    if n.notes:
        parts += ["## Where our setup differs from the document's", ""] + [f"- {note}" for note in n.notes] + [""]
    parts += ["## Step by step", ""]
    for s in n.steps:
        parts += _step_section(s, out, gallery)
    parts += ["## Reproduce", "", "```bash", command, "```", ""]
    return "\n".join(parts)

"""A PBT study's population in its report: each member's lineage, the exploit/explore events, and
the learning-rate schedule the population found (``population.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from studyrunner import plots
from studyrunner.report.results import StudyResult, TrialResult
from studyrunner.report.tables import md_table, num, value_text

__all__ = ["population_section", "population_info"]


def _key(t: TrialResult) -> tuple[int, int]:
    rec = t.pbt or {}
    return int(rec.get("member", -1)), int(rec.get("generation", -1))


def population_info(r: StudyResult) -> dict[str, Any]:
    """Per member its newest finished segment (whose history holds the member's whole lineage) and
    every exploit event, from the trials' ``pbt`` records."""
    finished = [t for t in r.trials if t.pbt and t.state.finished]
    last: dict[int, TrialResult] = {}
    for t in sorted(finished, key=_key):
        last[_key(t)[0]] = t
    events = [t for t in sorted(finished, key=lambda t: (_key(t)[1], _key(t)[0])) if (t.pbt or {}).get("event") == "exploit"]
    return {"last": dict(sorted(last.items())), "events": events, "segments": len(finished)}


def _changes(rec: dict[str, Any]) -> str:
    return ", ".join(f"{k} {num(a)} -> {num(b)}" for k, (a, b) in (rec.get("changes") or {}).items()) or "(none)"


def population_section(r: StudyResult, out: Path | None) -> list[str]:
    """The section (empty for a study that is not PBT)."""
    info = population_info(r)
    if not info["last"]:
        return []
    by_number = {t.number: t for t in r.trials}
    rows = []
    for member, t in info["last"].items():
        lrs = [h.get("lr") for h in t.history if h.get("lr") is not None]
        exploits = sum(1 for e in info["events"] if _key(e)[0] == member)
        epochs = t.history[-1]["epoch"] if t.history else 0
        lr_text = f"{lrs[0]:.3g} -> {lrs[-1]:.3g}" if lrs else "-"
        rows.append([member, t.number, epochs, value_text(t.value, r.metric), exploits, lr_text])
    parts = [
        "### Population (PBT)",
        "",
        f"{len(info['last'])} members, {info['segments']} segments. A member is a chain of trials, one per interval; "
        "at each boundary a member in the bottom quantile copied a top member's state (weights, optimizer, RNG) "
        "and perturbed its values.",
        "",
        md_table(["member", "last trial", "epochs", f"last segment's {r.metric}", "exploits", "lr first -> last"], rows),
        "",
    ]
    if info["events"]:
        lines = []
        for e in info["events"]:
            rec = e.pbt or {}
            parent = by_number.get(int(rec["parent"])) if rec.get("parent") is not None else None
            donor = _key(parent)[0] if parent else "?"
            copied = f"trial {rec.get('parent')} (member {donor})"
            lines.append([_key(e)[1], rec.get("start", 0), _key(e)[0], copied, _changes(rec)])
        parts += [md_table(["generation", "after epoch", "member", "copied", "values changed"], lines), ""]
    if out is not None and _draw(r, info, out / f"{r.name}_population.png"):
        parts += [f"![learning-rate schedule the population found]({r.name}_population.png)", ""]
    return parts


def _draw(r: StudyResult, info: dict[str, Any], path: Path) -> bool:
    members = {f"member {m}": t.history for m, t in info["last"].items() if t.history}
    if not members:
        return False
    exploits = [(f"member {_key(e)[0]}", int((e.pbt or {}).get("start", 0))) for e in info["events"]]
    fig = plots.population_figure(members, exploits, f"{r.name}: the population's learning rates")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plots.close(fig)
    return True

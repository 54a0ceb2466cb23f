"""The time-to-quality benchmark of search strategies, part 3: the report, and the whole
benchmark in one call (:func:`run_search_bench`): build or resume the table
(:mod:`studyrunner.bench.search_table`), replay every strategy
(:mod:`studyrunner.bench.search_replay`), write README.md, anytime.png and table.json.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from studyrunner import plots
from studyrunner.bench.search_replay import (
    NO_LEARNING_AFTER,
    REFERENCE,
    TOLERANCE,
    UNPRUNED,
    Replay,
    Summary,
    anytime_info,
    figures,
    run_strategies,
    summarise,
)
from studyrunner.bench.search_table import GRID_POINTS, Curve, Log, Table, build_table, config_id, params_text
from studyrunner.errors import StudyrunnerError
from studyrunner.report.tables import md_table
from studyrunner.search.spec import SweepSpec, load_sweep
from studyrunner.search.stopping import chance_band
from studyrunner.track.machine import machine

__all__ = ["summary_table", "render_report", "run_search_bench"]

SETTINGS: dict[str, Any] = {
    # replay costs seconds per seed where the table costs minutes per configuration: seeds are the
    # cheap axis, and the report says which part of the order between strategies they leave unsettled
    "seeds": 5,  # sampler seeds per strategy
    "grid_points": GRID_POINTS,  # values per numeric range; another value trains a new table
    "out": "reports/search_bench",  # the committed report: a rerun resumes its table.json and rewrites it
}


def _pm(v: tuple[float, float], scale: float = 1.0, digits: int = 1) -> str:
    return f"{scale * v[0]:.{digits}f} ± {scale * v[1]:.{digits}f}"


def summary_table(summaries: Sequence[Summary]) -> str:
    """The per-strategy figures as a markdown table (mean ± sd over seeds)."""
    head = [
        "strategy", "final best (%)", "epochs", "seconds", "epochs to target",
        "share of unpruned TPE's epochs", "seeds at target", "trials pruned",
    ]  # fmt: skip
    rows = [
        [
            f"`{s.name}`",
            _pm(s.best, 100),
            _pm(s.epochs),
            _pm(s.seconds, digits=0),
            _pm(s.to_target) + ("" if s.reached == s.seeds else " *"),
            f"{100 * s.share:.0f}%",
            f"{s.reached}/{s.seeds}",
            f"{s.pruned:.1f}",
        ]
        for s in summaries
    ]
    return md_table(head, rows)


def _setup_md(spec: SweepSpec, table: Table, sweep_path: str, n_trials: int, seeds: int) -> list[str]:
    s = table.setup
    grid = " x ".join(
        f"{k} {{{', '.join(_value_text(v) for v in vals)}}}" + (f" (when {_when_text(table.when[k])})" if k in table.when else "")
        for k, vals in table.axes.items()
    )
    train_s = sum(c.seconds for c in table.in_grid())
    points = {len(table.axes[name]) for name, p in spec.space.items() if p.choices is None}
    return [
        "## Setup",
        "",
        f"- Sweep `{sweep_path}` (study `{spec.study}`): {grid} = {len(table.in_grid())} configurations; numeric "
        f"ranges discretised to {', '.join(map(str, sorted(points))) or 'no'} points (log-spaced for log ranges).",
        f"- Every configuration trained once for {table.epochs} epochs (training seed {s.get('training_seed')}) on "
        f"{s.get('train_images')} training and {s.get('val_images')} validation images; model `{s.get('model')}`, "
        f"batch {s.get('batch_size')}, {s.get('device')}, {s.get('precision')}. Building the table took "
        f"{train_s / 60:.1f} minutes of training ({sum(len(c.points) for c in table.in_grid())} epochs).",
        f"- Machine: {s.get('machine') or machine()}.",
        f"- Replay: in-memory Optuna {optuna.__version__} studies of {n_trials} trials (the sweep's budget.n_trials), "
        f"sampler seeds 0..{seeds - 1}; discretised ranges are suggested as grid indices (`suggest_int`) so TPE models "
        "their order, choices as categoricals. A trial reports each epoch's val_acc, is stopped by the no-learning rule "
        f"(from epoch {NO_LEARNING_AFTER}) where the strategy uses it, then asks the pruner; its value is its best "
        "val_acc. A diverged curve ends pruned, paid up to the epoch that diverged.",
        "- Strategies: `random` and `tpe` prune nothing (the unpruned references); `tpe+median`: MedianPruner "
        "(4 startup trials, 2 warm-up epochs); `tpe+hyperband`: HyperbandPruner (min_resource 1, reduction factor 3); "
        "`tpe+sha`: SuccessiveHalvingPruner (Optuna's defaults); `+no-learning`: the no-learning rule "
        "(`rules.no_learning`).",
        "",
    ]


def _when_text(when: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={'/'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in when.items())


def _value_text(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _cell(curve: Curve | None, table: Table) -> str:
    if curve is None or curve.best is None:
        return "-" if curve is None else f"div. ep {len(curve.points)}"
    text = f"{100 * curve.best:.1f}"
    if curve.best <= chance_band(table.classes, table.n_eval):
        text += " ·"
    return text + (f" (div. ep {len(curve.points)})" if curve.diverged(table.epochs) else "")


def _table_md(table: Table) -> list[str]:
    """The table as a grid: one column per value of the longest axis, one row per combination of the others."""
    last = max((n for n in table.axes if n not in table.when), key=lambda n: len(table.axes[n]))
    rest = [n for n in table.axes if n != last]
    combos: dict[str, dict[str, Any]] = {}  # each row: the values of the other parameters a configuration has
    for params in table.configs():
        fixed = {k: v for k, v in params.items() if k != last}
        combos.setdefault(config_id(fixed), fixed)
    rows = []
    for fixed in combos.values():
        cells = [_cell(table.curves.get(config_id(table.active({**fixed, last: v}))), table) for v in table.axes[last]]
        label = [_value_text(v) if k not in table.when else f"{k}={_value_text(v)}" for k, v in fixed.items()]
        rows.append([", ".join(label) or "-", *cells])
    band = chance_band(table.classes, table.n_eval)
    return [
        "## The table: best val_acc (%) of every configuration",
        "",
        md_table([", ".join(rest) or "-", *[f"{last}={_value_text(v)}" for v in table.axes[last]]], rows),
        "",
        f"`·` = within chance ({100 * band:.1f}% for {table.classes} classes on {table.n_eval} images); "
        "`div. ep N` = diverged at epoch N.",
        "",
    ]


def _table_findings(table: Table) -> str:
    best = table.best()
    band = chance_band(table.classes, table.n_eval)
    stuck = sum(1 for c in table.in_grid() if c.best is not None and c.best <= band and not c.diverged(table.epochs))
    diverged = sum(1 for c in table.in_grid() if c.diverged(table.epochs))
    return (
        f"The table's best configuration is {params_text(best.params)} at {100 * (best.best or 0):.1f}%. "
        f"{stuck} of the {len(table.in_grid())} configurations never left chance level and {diverged} diverged: "
        "their epochs are what a stopping rule or a pruner can save."
    )


def _strategy_findings(reference: float, summaries: Sequence[Summary], table: Table) -> str:
    by = {s.name: s for s in summaries}
    full = sorted((s for s in summaries if s.reached == s.seeds), key=lambda s: s.share)
    missed = [
        f"`{s.name}` ({s.seeds - s.reached} of {s.seeds} seeds: {s.lost} stopped such a configuration early, "
        f"{s.seeds - s.reached - s.lost} never drew one)"
        for s in summaries
        if s.reached < s.seeds
    ]
    worse = [f"`{s.name}` ({100 * s.best[0]:.1f}%)" for s in summaries if s.best[0] < reference - TOLERANCE]
    ref_epochs = by[REFERENCE].epochs[0] if REFERENCE in by else 0.0
    text = (
        f"Unpruned TPE ends at {100 * reference:.1f}% on average ({100 * ((table.best().best or 0) - reference):.1f} "
        f"points below the table's best), so the target is {100 * (reference - TOLERANCE):.1f}%. "
        + _winners(table, reference - TOLERANCE)
    )
    text += _fastest(full, ref_epochs) + _cheapest(summaries, reference, ref_epochs)
    if missed:
        text += f"Seeds that never reached it (their whole cost counts, marked *): {', '.join(missed)}. "
    cut = [f"`{s.name}` ({s.cut_short})" for s in summaries if s.cut_short]
    text += (
        f"Trials stopped although they would have reached the target, over all seeds: {', '.join(cut)}. "
        if cut
        else "No stop cut short a trial that would have reached the target. "
    )
    if worse:
        text += f"Final best more than {100 * TOLERANCE:.0f} point below the reference: {', '.join(worse)}."
    return text.strip()


def _fastest(full: Sequence[Summary], ref_epochs: float) -> str:
    """The strategy with the smallest share, and which others the seeds cannot tell from it. The
    comparison is paired by seed (at one seed the strategies share their first draws): a strategy is
    within noise when its mean extra epochs are under two standard errors of those differences."""
    if not full:
        return ""
    w = full[0]
    close = [s.name for s in full[1:] if not _settled([b - a for a, b in zip(w.to_target_seeds, s.to_target_seeds, strict=True)])]
    text = (
        f"`{w.name}` reached it in every seed with the smallest share: {w.to_target[0]:.1f} ± {w.to_target[1]:.1f} "
        f"epochs, {100 * w.share:.0f}% of unpruned TPE's {ref_epochs:.0f}. In order after it: "
        + ", ".join(f"`{s.name}` {100 * s.share:.0f}%" for s in full[1:])
        + ". "
    )
    if close:
        text += (
            f"Paired by seed, {', '.join(f'`{n}`' for n in close)} {'is' if len(close) == 1 else 'are'} within two "
            f"standard errors of it: that part of the order is not settled by {w.seeds} seeds. "
        )
    return text


def _settled(diffs: Sequence[float]) -> bool:
    """True when the mean of the paired differences is more than two standard errors above 0."""
    if len(diffs) < 2:
        return False
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    return mean > 2 * sd / math.sqrt(len(diffs))


def _cheapest(summaries: Sequence[Summary], reference: float, ref_epochs: float) -> str:
    """The strategy whose whole study cost the fewest epochs while its final best stayed within the tolerance."""
    good = [s for s in summaries if s.best[0] >= reference - TOLERANCE]
    if not good or not ref_epochs:
        return ""
    c = min(good, key=lambda s: s.epochs[0])
    return (
        f"Counting whole studies, the strategy that spent the fewest epochs with a final best within "
        f"{100 * TOLERANCE:.0f} point of the reference was `{c.name}`: {c.epochs[0]:.1f} ± {c.epochs[1]:.1f} epochs, "
        f"{100 * c.epochs[0] / ref_epochs:.0f}% of unpruned TPE's, final best {100 * c.best[0]:.1f}%. "
    )


def _winners(table: Table, target: float) -> str:
    """Which configurations reach the target: with few, epochs to target measure how soon a strategy finds one."""
    hits = [c for c in table.in_grid() if c.best is not None and c.best >= target - 1e-12 and not c.diverged(table.epochs)]
    if len(hits) > 3:
        return f"{len(hits)} of the {len(table.in_grid())} configurations reach it. "
    named = "; ".join(f"{params_text(c.params)}" for c in hits)
    misses = [c for c in table.in_grid() if c.best is not None and c.best < target - 1e-12]
    near = max(misses, key=lambda c: c.best or 0.0, default=None)
    nearest = (
        f" The nearest miss, {params_text(near.params)} at {100 * (near.best or 0):.1f}%, falls "
        f"{100 * (target - (near.best or 0)):.1f} points short."
        if near
        else ""
    )
    return (
        f"Only {len(hits)} of the {len(table.in_grid())} configurations {'reaches' if len(hits) == 1 else 'reach'} it "
        f"({named}), so epochs to target measure how soon a strategy draws "
        f"{'it' if len(hits) == 1 else 'one of them'} and lets it finish.{nearest} "
    )


def _caveats(reference: float, table: Table, n_trials: int) -> str:
    se = math.sqrt(reference * (1 - reference) / max(table.n_eval, 1))
    text = (
        f"What it cannot show: each configuration was trained once, with one training seed, and an accuracy near "
        f"{100 * reference:.0f}% measured on {table.n_eval} images has a binomial standard error of "
        f"{100 * se:.1f} points, so the 1-point target lies within the noise of a single curve. Replay takes that "
        "noise out of the comparison between strategies (they all see the same curves), not out of which "
        f"configuration counts as best. {n_trials} trials on a {len(table.in_grid())}-point grid: samplers may draw a "
        "configuration twice, and pay for it again, as a study would retrain it."
    )
    if n_trials > 10:
        text += (
            " TPE's first 10 trials (Optuna's default n_startup_trials) are random search's own draws at the same "
            "seed, so at one seed every strategy samples the same first 10 configurations; the strategies differ in "
            f"what those trials cost and in the last {n_trials - 10}."
        )
    seconds = "Seconds are the table's wall time per epoch on this machine, shared with other work while it ran."
    return f"{text} {seconds}"


def render_report(
    spec: SweepSpec,
    sweep_path: str,
    table: Table,
    reference: float,
    summaries: Sequence[Summary],
    n_trials: int,
    seeds: int,
    figure: str,
) -> str:
    """The benchmark's README: setup, per-strategy figures, the anytime figure, the table, what it
    shows and the command that reproduces it."""
    lines = [
        f"# {spec.study}: time to quality of search strategies (tabular benchmark)",
        "",
        "How little training does each search strategy (sampler, pruner, stopping rule) need to find a "
        "configuration as good as the unpruned search finds? Every configuration of the discretised space is "
        "trained once; each strategy then replays that table with real Optuna samplers and pruners and pays for "
        "the epochs its trials consume.",
        "",
        *_setup_md(spec, table, sweep_path, n_trials, seeds),
        "## Results",
        "",
        f"Reference: unpruned TPE's final best, mean over seeds, {100 * reference:.1f}%; target "
        f"{100 * (reference - TOLERANCE):.1f}% (within {100 * TOLERANCE:.0f} point). Mean ± sd over {seeds} sampler seeds; "
        "epochs to target count the whole study's epochs until a complete trial first reaches the target "
        "(* = some seeds never did: their total counts).",
        "",
        summary_table(summaries),
        "",
        f"![best value against epochs trained, mean over seeds]({figure})",
        "",
        *_table_md(table),
        "## What it shows",
        "",
        _table_findings(table),
        "",
        _strategy_findings(reference, summaries, table),
        "",
        _caveats(reference, table, n_trials),
        "",
        "## Reproduce",
        "",
        "```",
        f"studyrunner bench search {sweep_path}",
        "```",
        "",
    ]
    return "\n".join(lines)


def _save_figure(replays: Mapping[str, Sequence[Replay]], target: float, path: Path) -> None:
    info = {name: anytime_info(runs) for name, runs in replays.items()}
    fig = plots.anytime_figure(info, target, "best complete trial vs epochs trained (mean over seeds)", dashed=UNPRUNED)
    try:
        fig.savefig(path, dpi=110)
    finally:
        plots.close(fig)


def run_search_bench(
    sweep_path: str | Path,
    overrides: dict[str, Any],
    data_dir: str | None,
    out_dir: Path = Path(SETTINGS["out"]),
    seeds: int = SETTINGS["seeds"],
    grid_points: int = SETTINGS["grid_points"],
    log: Log = print,
) -> dict[str, float]:
    """Build (or resume) the table of ``sweep_path``'s discretised space, replay every strategy
    over ``seeds`` sampler seeds, and write ``out_dir``/README.md, anytime.png and table.json."""
    if seeds < 1:
        raise StudyrunnerError(f"seeds must be at least 1, got {seeds}")
    spec = load_sweep(sweep_path)
    table = build_table(spec, overrides, data_dir, out_dir / "table.json", grid_points, log)
    replays = run_strategies(table, spec.budget.n_trials, range(seeds))
    reference, summaries = summarise(replays)
    log(summary_table(summaries))
    _save_figure(replays, reference - TOLERANCE, out_dir / "anytime.png")
    report = render_report(spec, str(sweep_path), table, reference, summaries, spec.budget.n_trials, seeds, "anytime.png")
    (out_dir / "README.md").write_text(report)
    log(f"wrote {out_dir / 'README.md'}, {out_dir / 'anytime.png'} and {out_dir / 'table.json'}")
    return figures(reference, summaries, table)

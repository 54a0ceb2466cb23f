"""Running a narrative study: every step in order, one Optuna study per step (a grid over seeds)."""

from __future__ import annotations

from collections.abc import Callable

from studyrunner.narrative.spec import NarrativeSpec
from studyrunner.search.driver import RunOptions, StudyOutcome, run_study
from studyrunner.search.objective import DataSource, StudyEvents

__all__ = ["run_narrative"]


def run_narrative(
    spec: NarrativeSpec,
    scale: str,
    opts: RunOptions,
    events: StudyEvents | None = None,
    announce: Callable[[str], None] | None = None,
) -> list[StudyOutcome]:
    """Run every step of a narrative study in order, one Optuna study per step (a grid over seeds).

    Resumable: a step whose study already holds its trials runs nothing; the dataset is loaded
    once for all steps. ``announce(message)`` hears which step starts.
    """
    spec.check(scale, opts.overrides)
    events = events or StudyEvents()
    data = DataSource(opts.data_dir, events.data_progress, events.notice)
    step_opts = RunOptions(None, opts.timeout, opts.overrides, opts.storage, opts.tracking_uri, opts.data_dir)
    outcomes = []
    for i, step in enumerate(spec.steps, 1):
        sweep = spec.step_sweep(step, scale)
        if announce:
            announce(f"step {i}/{len(spec.steps)}: {step.title} [{sweep.study}]")
        outcomes.append(run_study(sweep, step_opts, events, data))
    return outcomes

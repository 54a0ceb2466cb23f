"""Running a narrative study: every step in order, one Optuna study per step (a grid over seeds)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from studyrunner.errors import StudyrunnerError
from studyrunner.narrative.spec import NarrativeSpec
from studyrunner.search.best import best_trial, best_values
from studyrunner.search.driver import RunOptions, StudyOutcome, run_study
from studyrunner.search.objective import DataSource, StudyEvents
from studyrunner.search.spec import load_sweep

__all__ = ["run_narrative"]


def run_narrative(
    spec: NarrativeSpec,
    scale: str,
    opts: RunOptions,
    events: StudyEvents | None = None,
    announce: Callable[[str], None] | None = None,
    only: Sequence[str] = (),
) -> list[StudyOutcome]:
    """Run every step of a narrative study in order, one Optuna study per step (a grid over seeds).

    Resumable: a step whose study already holds its trials runs nothing; the dataset is loaded
    once for all steps. ``announce(message)`` hears which step starts. ``only``: these steps
    alone (in the file's order), the others left as they are.
    """
    spec.check(scale, opts.overrides)
    chosen = {spec.step(name).name for name in only}  # an unknown name: the steps the file has
    events = events or StudyEvents()
    data = DataSource(opts.data_dir, events.data_progress, events.notice)
    step_opts = RunOptions(None, opts.timeout, opts.overrides, opts.storage, opts.tracking_uri, opts.data_dir)
    outcomes = []
    for i, step in enumerate(spec.steps, 1):
        if chosen and step.name not in chosen:
            continue
        found, found_trial = None, None
        if step.best_of:  # the automatic study first (resumed when it ran before), then its best configuration
            search = load_sweep(spec.best_of_path(step))
            if announce:
                announce(f"step {i}/{len(spec.steps)}: {step.title}: the search {search.study} ({search.source})")
            outcome = run_study(search, RunOptions(None, opts.timeout, {}, opts.storage, opts.tracking_uri, opts.data_dir))
            found, best = best_values(outcome.study), best_trial(outcome.study)
            if found is None or best is None:
                raise StudyrunnerError(f"{spec.source}: step {step.name}: the search {search.study} has no complete trial")
            found_trial = best.number
        sweep = spec.step_sweep(step, scale, found, found_trial)
        if announce:
            announce(f"step {i}/{len(spec.steps)}: {step.title} [{sweep.study}]")
        outcomes.append(run_study(sweep, step_opts, events, data))
    return outcomes

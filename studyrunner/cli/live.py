"""Live progress of a study in the terminal: trials done/pruned/failed, best so far, epoch bar."""

from __future__ import annotations

from types import TracebackType
from typing import Any

import optuna
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from studyrunner.cli.views import percent, wrapping_table
from studyrunner.engine.fit import EpochRecord
from studyrunner.search.best import best_trial
from studyrunner.search.driver import StudyOutcome
from studyrunner.search.objective import StudyEvents
from studyrunner.search.spec import SweepSpec
from studyrunner.states import TrialRecord, TrialState, count_states, finished_count, first_value, trial_state

__all__ = ["LiveStudy"]


def _params(p: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())


class LiveStudy(StudyEvents):
    def __init__(self, console: Console, spec: SweepSpec) -> None:
        self.console, self.spec = console, spec
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.epoch_task = self.progress.add_task("waiting for data", total=None)
        self.batch_task = self.progress.add_task("batches", total=None, visible=False)

    def __enter__(self) -> LiveStudy:
        self.progress.__enter__()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.__exit__(et, ev, tb)

    def data_progress(self, what: str, done: int, total: int) -> None:
        self.progress.update(self.epoch_task, description=what, completed=done, total=total)

    def notice(self, text: str) -> None:
        self.progress.console.print(f"note: {text}", highlight=False, style="yellow")

    def trial_started(self, number: int, params: dict[str, Any]) -> None:
        self.progress.console.print(f"trial {number} started: {_params(params)}", highlight=False)
        self.progress.update(self.epoch_task, description=f"trial {number} epochs", completed=0, total=None)
        self.progress.update(self.batch_task, visible=True, completed=0)

    def epoch_done(self, number: int, record: EpochRecord, epochs: int) -> None:
        val = "-" if record.val_acc is None else f"{100 * record.val_acc:.1f}%"
        self.progress.update(
            self.epoch_task, completed=record.epoch, total=epochs, description=f"trial {number} epochs (val acc {val})"
        )

    def batch_done(self, done: int, total: int) -> None:
        self.progress.update(self.batch_task, completed=done, total=total)

    def trial_finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        counts = count_states(trials)
        state = trial_state(trial)
        value = "" if not trial.values else " value " + " / ".join(f"{v:.4g}" for v in trial.values)
        why = TrialRecord.of(trial.user_attrs).why
        top = best_trial(study)
        best = "no completed trial yet"
        if top is not None:
            best = f"best {first_value(top) or 0.0:.4f} (trial {top.number}: {_params(top.params)})"
        shown = {
            TrialState.COMPLETE: "complete",
            TrialState.PRUNED: "pruned",
            TrialState.DIVERGED: "diverged",
            TrialState.FAIL: "failed",
        }
        self.progress.console.print(
            f"trial {trial.number} {state}{value}{' - ' + why if why and state != TrialState.COMPLETE else ''}\n"
            f"  finished {finished_count(trials)}: "
            + ", ".join(f"{word} {counts.get(s, 0)}" for s, word in shown.items())
            + f" | {best}",
            highlight=False,
        )
        self.progress.update(self.batch_task, visible=False)

    def summary(self, outcome: StudyOutcome) -> None:
        study = outcome.study
        params = sorted({k for t in study.trials for k in t.params})
        title = f"study {study.study_name}: {finished_count(study.trials)}/{outcome.target} finished"
        table = wrapping_table("trial", "state", "value", "test acc", "epochs", *params, title=title)  # headers fold, never "…"
        for t in study.trials:
            state = trial_state(t)
            record = TrialRecord.of(t.user_attrs)
            test = record.test_acc
            table.add_row(
                str(t.number),
                state,
                "-" if not t.values else " / ".join(f"{v:.4g}" for v in t.values),
                percent(test),
                str(record.epochs or len(record.history or []) or len(t.intermediate_values)),
                *[(f"{t.params[k]:.3g}" if isinstance(t.params.get(k), float) else str(t.params.get(k, "-"))) for k in params],
            )
        Console().print(table)
        if outcome.stopped:
            self.console.print(f"stopped early: {outcome.stopped}", highlight=False)

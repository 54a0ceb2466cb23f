"""What a study ends with: its best trial, the epochs it spent, the best model registered in MLflow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna

from studyrunner.states import TrialRecord, best_of

if TYPE_CHECKING:
    from studyrunner.search.objective import StudyEvents

__all__ = ["best_trial", "best_values", "epochs_spent", "register_study"]


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The COMPLETE trial (trained here, not imported) best on the study's first objective."""
    return best_of(study.get_trials(deepcopy=False), study.directions[0] == optuna.study.StudyDirection.MAXIMIZE)


def best_values(study: optuna.Study) -> dict[str, Any] | None:
    """The best trial's sampled values as config keys (list-valued choices decoded); None without one."""
    from studyrunner.search.space import decode

    best = best_trial(study)
    return None if best is None else {k: decode(v) for k, v in best.params.items()}


def epochs_spent(trials: list[optuna.trial.FrozenTrial], running: int, repeats: int) -> int:
    """Epochs the trials trained, every seed counted: a finished (or failed) trial's recorded epochs
    less those an earlier attempt trained and it resumed from (counted with that attempt), a running
    one at ``running``; never-trained trials (surplus, interrupted at once) add 0."""
    spent = 0
    for t in trials:
        if t.state == optuna.trial.TrialState.RUNNING:
            spent += running
        elif t.state.is_finished():
            rec = TrialRecord.of(t.user_attrs)
            start = int((rec.pbt or {}).get("start", 0))  # a PBT segment's inherited epochs are not in rec.epochs
            before = max(0, (rec.resumed_from_epoch or 0) - start)
            spent += max(0, (rec.epochs or 0) - before) * repeats
    return spent


def register_study(study: optuna.Study, tracking_uri: str, events: StudyEvents | None = None) -> tuple[bool, str]:
    """The best trial's model registered as the study's name with the alias ``best`` (see
    ``track.registry``); a line that says what happened. A registry that refuses costs no result:
    the trials and their checkpoints are recorded already, and ``studyrunner register`` retries.
    Whether it is registered now, and the line."""
    from studyrunner.engine.checkpoint import load_checkpoint
    from studyrunner.track.registry import register_best

    best = best_trial(study)
    record = TrialRecord.of(best.user_attrs) if best is not None else None
    if best is None or record is None or not record.checkpoint or not record.mlflow_run_id:
        return False, f"study {study.study_name}: no completed, tracked trial with a checkpoint to register"
    try:
        model = load_checkpoint(record.checkpoint)
        done = register_best(tracking_uri, study.study_name, record.mlflow_run_id, model, best.number)
    except Exception as exc:  # the registry's failure is reported, never the study's
        ok = False
        why = f"{type(exc).__name__}: {exc}"
        line = f"the best model of {study.study_name} was not registered ({why}); retry: studyrunner register {study.study_name}"
    else:
        ok = True
        how = "registered" if done.new else "already registered"
        line = f"best model (trial {best.number}) {how} as {done.name} version {done.version}: {done.uri}"
    if events is not None:
        events.notice(line)
    return ok, line

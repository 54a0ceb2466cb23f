"""Studies and trials as plain data (pandas DataFrames), read from Optuna storage."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna

from studyrunner.config import config_to_dict
from studyrunner.errors import StudyrunnerError
from studyrunner.search.trialconfig import local_checkpoint
from studyrunner.states import TrialRecord, TrialState, best_of, count_states, first_value, trial_state
from studyrunner.stores import open_storage
from studyrunner.track.history import read_history

if TYPE_CHECKING:
    import pandas as pd

    from studyrunner.narrative.spec import NarrativeSpec, Verdict

__all__ = [
    "best_config",
    "pareto_front",
    "StudyRow",
    "TrialResult",
    "StudyResult",
    "StepResult",
    "NarrativeResult",
    "list_studies",
    "load_study",
    "trials_frame",
    "study_result",
    "importances",
    "narrative_result",
]


@dataclass
class StudyRow:
    name: str
    direction: str
    counts: dict[TrialState, int]
    best_value: float | None  # on the first objective
    best_params: dict[str, Any]
    front: int = 0  # multi-objective: trials on the Pareto front


_PORTABLE = {"out_dir": "", "device": "auto", "threads": 0, "precision": "auto", "data.path": "", "data.cache_dir": ""}


def best_config(study: optuna.Study) -> dict[str, Any]:
    """The best COMPLETE trial's full training configuration (the study's fixed config with the
    trial's parameters), ready for ``studyrunner train``; where and how fast it ran are left to
    the machine that trains it (device, precision, threads, paths)."""
    from studyrunner.config import apply_overrides, config_from_dict, flatten
    from studyrunner.search.space import decode

    best = best_of(study.get_trials(deepcopy=False), _maximize(study))
    stored = study.user_attrs.get("base_config")
    if best is None or not stored:
        raise StudyrunnerError(f"study {study.study_name!r} has no completed trial of studyrunner's to export")
    cfg = apply_overrides(config_from_dict(stored), {k: decode(v) for k, v in best.params.items()})
    data_path = cfg.data.path or str(study.user_attrs.get("data_root", ""))  # the root the trials read
    flat = {**flatten(config_to_dict(cfg)), **_PORTABLE, "data.path": data_path}
    checkpoint = _checkpoint(best, study.user_attrs.get("tracking_uri"))
    config = config_to_dict(config_from_dict(flat))
    return {"trial": best.number, "value": first_value(best), "config": config, "checkpoint": checkpoint}


def _maximize(study: optuna.Study) -> bool:
    """The study's first objective is maximised."""
    return bool(study.directions[0] == optuna.study.StudyDirection.MAXIMIZE)


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """A multi-objective study's non-dominated COMPLETE trials (Optuna's best_trials); [] for one objective."""
    if len(study.directions) < 2:
        return []
    return [t for t in study.best_trials if trial_state(t) == TrialState.COMPLETE]


def list_studies(storage: str) -> list[StudyRow]:
    """One row per study in ``storage``: trials by state and the best trial."""
    rows = []
    store = optuna.storages.get_storage(open_storage(storage))  # one connection and schema check for every study (0.4 s each)
    for s in optuna.get_all_study_summaries(store, include_best_trial=False):
        if s.study_name.endswith(".pruning"):  # a multi-objective study's pruning mirror, not a study of its own
            continue
        study = optuna.load_study(study_name=s.study_name, storage=store)
        trials = study.get_trials(deepcopy=False)
        best = best_of(trials, _maximize(study))
        direction = ", ".join(d.name.lower() for d in study.directions)
        front = len(pareto_front(study))
        rows.append(
            StudyRow(
                s.study_name,
                direction,
                count_states(trials),
                first_value(best) if best else None,
                dict(best.params) if best else {},
                front,
            )
        )
    return rows


def load_study(name: str, storage: str) -> optuna.Study:
    store = open_storage(storage)  # a database URL, journal:PATH or a grpc:// storage proxy
    try:
        return optuna.load_study(study_name=name, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
        raise StudyrunnerError(f"no study named {name!r} in {storage}; studies there: {', '.join(names) or 'none'}") from None


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """Trials joined with their final metrics: number, state, value, params, test/val metrics, timing."""
    import pandas as pd

    return pd.DataFrame(trial_rows(study))


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """``trials_frame``'s rows as plain dicts (what `show` prints, without importing pandas)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rec = TrialRecord.of(t.user_attrs)
        history = rec.history or []  # studies recorded before curves moved out of Optuna kept it here
        last = history[-1] if history else {"train_acc": rec.final_train_acc, "val_acc": rec.final_val_acc}
        row: dict[str, Any] = {
            "number": t.number,
            "state": trial_state(t),
            "value": first_value(t),
            "values": list(t.values) if t.values and len(t.values) > 1 else None,
            "value_sd": rec.value_sd,
            "best_val_acc": rec.best_val_acc,
            "test_acc": rec.test_acc,
            "test_loss": rec.test_loss,
            "final_train_acc": last.get("train_acc"),
            "final_val_acc": last.get("val_acc"),
            "best_epoch": rec.best_epoch,
            "epochs": rec.epochs or len(history) or len(t.intermediate_values),  # a diverged epoch counts too
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "reason": rec.why,
        }
        row.update({f"param.{k}": v for k, v in t.params.items()})
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- report data (plain)


@dataclass
class TrialResult:
    number: int
    state: TrialState
    value: float | None
    params: dict[str, Any]
    history: list[dict[str, Any]]  # per-epoch records (first seed)
    test_acc: float | None = None
    duration_s: float | None = None
    reason: str = ""
    values: list[float] | None = None  # every objective's value (multi-objective studies)
    pbt: dict[str, Any] | None = None  # sampler pbt: the segment and what it started from (TrialRecord.pbt)

    def metric(self, name: str) -> float | None:
        """best_val_acc, final_val_acc, final_train_acc, test_acc, final_gap, train_acc@N, val_acc@N."""
        h = self.history
        if name == "test_acc":
            return self.test_acc
        if not h:
            return None
        if "@" in name:
            key, _, n = name.partition("@")
            return h[int(n) - 1].get(key) if len(h) >= int(n) else None
        vals = [r["val_acc"] for r in h if r.get("val_acc") is not None]
        last = h[-1]
        if name == "best_val_acc":
            return max(vals) if vals else None
        if name == "final_val_acc":
            return last.get("val_acc")
        if name == "final_train_acc":
            return last.get("train_acc")
        if name == "final_gap":
            return None if last.get("val_acc") is None else last["train_acc"] - last["val_acc"]
        if name == "best_epoch":
            return float(1 + max(range(len(h)), key=lambda i: h[i].get("val_acc") or -1.0)) if vals else None
        raise KeyError(name)

    def last_reported(self, metric: str) -> float | None:
        """A stopped trial's last reported value: Optuna keeps it as a pruned (or diverged) trial's
        value; without it, the last finite epoch value of ``metric`` in the history (what the
        objective reports: test_ metrics as their val_ twins)."""
        if self.value is not None and math.isfinite(self.value):
            return float(self.value)
        key = metric.replace("test_", "val_")
        found = [v for rec in self.history if isinstance(v := rec.get(key), int | float) and math.isfinite(v)]
        return float(found[-1]) if found else None

    def seconds(self) -> float:
        """What the trial cost: its wall time (every seed, the data loading and the test evaluation,
        what it held a worker for); the sum of its epochs' seconds when none was stored."""
        if self.duration_s is not None:
            return float(self.duration_s)
        return sum(float(r.get("epoch_seconds") or 0.0) for r in self.history)


@dataclass
class StudyResult:
    name: str
    direction: str
    metric: str
    sampler: str
    pruner: str
    trials: list[TrialResult]
    importances: dict[str, float]  # parameter -> importance (fANOVA, seeded), empty when not computable
    distributions: dict[str, str]  # parameter -> categorical | int | float | log-float
    checkpoint: str = ""  # best trial's best-validation checkpoint, when one was saved
    objectives: list[tuple[str, str]] = field(default_factory=list)  # (metric, direction) of each objective
    front: list[int] = field(default_factory=list)  # multi-objective: trial numbers on the Pareto front
    tracking_uri: str = ""  # the MLflow store the study logged to ("" when it was not tracked)
    confusion: dict[str, Any] | None = None  # best trial's validation confusion: {"trial", "classes", "matrix"[true][pred]}

    @property
    def complete(self) -> list[TrialResult]:
        return [t for t in self.trials if t.state == TrialState.COMPLETE and t.value is not None]

    def ranked(self) -> list[TrialResult]:
        sign = 1.0 if self.direction == "minimize" else -1.0
        return sorted(self.complete, key=lambda t: sign * float(t.value or 0.0))


def trial_history(t: optuna.trial.FrozenTrial, tracking: str | None = None) -> list[dict[str, Any]]:
    """A trial's per-epoch records: its ``history.json`` beside the checkpoint, else (a trial that ran
    on another machine) its MLflow run's metric history on ``tracking``; empty when neither has it."""
    rec = TrialRecord.of(t.user_attrs)
    if rec.history:  # recorded before curves moved out of Optuna's trial table
        return list(rec.history)
    found = read_history(rec.out_dir) if rec.out_dir else None
    if found is None and tracking and rec.mlflow_run_id:
        from studyrunner.track.runs import epoch_history

        found = epoch_history(tracking, rec.mlflow_run_id)
    return found or []


def _trial_result(t: optuna.trial.FrozenTrial, tracking: str | None = None) -> TrialResult:
    rec = TrialRecord.of(t.user_attrs)
    return TrialResult(
        t.number,
        trial_state(t),
        first_value(t),
        dict(t.params),
        trial_history(t, tracking),
        rec.test_acc,
        t.duration.total_seconds() if t.duration else None,
        rec.why,
        list(t.values) if t.values and len(t.values) > 1 else None,
        rec.pbt,
    )


def _kind(d: optuna.distributions.BaseDistribution) -> str:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return "categorical"
    if isinstance(d, optuna.distributions.IntDistribution):
        return "int"
    return "log-float" if getattr(d, "log", False) else "float"


def _checkpoint(best: optuna.trial.FrozenTrial, tracking: str | None) -> str:
    """The best checkpoint here (fetched from the artifact store when it ran elsewhere), else the
    path it was written to."""
    return local_checkpoint(best, tracking or "") or TrialRecord.of(best.user_attrs).checkpoint


def study_result(study: optuna.Study) -> StudyResult:
    """Everything a report needs from one study, as plain data."""
    sweep = study.user_attrs.get("sweep", {})
    tracking = study.user_attrs.get("tracking_uri")
    trials = [_trial_result(t, tracking) for t in study.get_trials(deepcopy=False)]
    best = best_of(study.get_trials(deepcopy=False), _maximize(study))
    checkpoint = "" if best is None else _checkpoint(best, tracking)
    targets = sweep.get("objectives") or [sweep.get("objective", {})]
    objectives = [(o.get("metric", "value"), d.name.lower()) for o, d in zip(targets, study.directions, strict=False)]
    return StudyResult(
        study.study_name,
        study.directions[0].name.lower(),
        sweep.get("objective", {}).get("metric", "value"),
        sweep.get("sampler", {}).get("name", "?"),
        sweep.get("pruner", {}).get("name", "?"),
        trials,
        importances(study),
        _distributions(study),
        checkpoint,
        objectives,
        [t.number for t in pareto_front(study)],
        tracking or "",
        _confusion(best, tracking),
    )


def _distributions(study: optuna.Study) -> dict[str, str]:
    """Every parameter any trial sampled, with its kind."""
    dists: dict[str, str] = {}
    for t in study.get_trials(deepcopy=False):
        for k, d in t.distributions.items():
            dists.setdefault(k, _kind(d))
    return dists


def _confusion(best: optuna.trial.FrozenTrial | None, tracking: str | None) -> dict[str, Any] | None:
    """The best trial's validation confusion matrix, read from its MLflow run's artifacts (the
    first seed's, of its best-validation weights); None without tracking, a run, or the artifact."""
    run_id = "" if best is None else TrialRecord.of(best.user_attrs).mlflow_run_id
    if best is None or not tracking or not run_id:
        return None
    from studyrunner.track.runs import read_confusion

    found = read_confusion(tracking, run_id)
    return None if found is None else {"trial": best.number, **found}


# fANOVA fits a random forest to (parameters -> value). Below 8 trials its trees split a handful of
# bootstrap samples and the importances are seed noise; it also needs about two trials per
# parameter before it can tell one parameter's effect from another's.
IMPORTANCE_MIN_TRIALS = 8


def importance_min_trials(n_params: int) -> int:
    """Complete trials a study needs before its fANOVA importances are reported: max(8, 2 x parameters)."""
    return max(IMPORTANCE_MIN_TRIALS, 2 * n_params)


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances, with a fixed seed (same study, same numbers), of the parameters every
    complete trial has (conditional ones are left out); {} below ``importance_min_trials`` complete
    trials or when Optuna cannot compute them (no parameter that varies)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < importance_min_trials(len(_distributions(study))):
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        first = (lambda t: t.values[0]) if len(study.directions) > 1 else None  # on the first objective
        found = optuna.importance.get_param_importances(study, evaluator=evaluator, target=first)
        return {k: round(float(v), 6) for k, v in found.items()}
    except (RuntimeError, ValueError):
        return {}


# --------------------------------------------------------------------------- narrative data


@dataclass
class StepResult:
    name: str
    title: str
    setup: str
    claim: str
    document: dict[str, Any]
    runs: list[TrialResult]  # one per seed (complete or not)
    config: dict[str, Any]  # the resolved config of the step at this scale
    checkpoint: str = ""  # best-validation checkpoint of the step's best run, when one was saved
    confusion: dict[str, Any] | None = None  # its best run's validation confusion matrix (see StudyResult)
    # a best_of step: the search it retrains the best of (study, sweep, sampler, pruner, trials, complete,
    # epochs spent, best trial, its value and values)
    search: dict[str, Any] | None = None

    def values(self, metric: str) -> list[float]:
        return [v for v in (r.metric(metric) for r in self.runs if r.state == TrialState.COMPLETE) if v is not None]


@dataclass
class NarrativeResult:
    study: str
    title: str
    description: str
    scale: str
    scale_config: dict[str, Any]
    steps: list[StepResult]
    verdicts: list[Verdict]
    notes: list[str]
    source: str


def _search_info(spec: NarrativeSpec, step: Any, store: Any, names: set[str]) -> dict[str, Any] | None:
    """What a ``best_of`` step's search spent and found (None before it ran)."""
    from studyrunner.search.best import best_trial, best_values, epochs_spent
    from studyrunner.search.spec import load_sweep

    sweep = load_sweep(spec.best_of_path(step))
    if sweep.study not in names:
        return None
    study = optuna.load_study(study_name=sweep.study, storage=store)
    trials = study.get_trials(deepcopy=False)
    best = best_trial(study)
    return {
        "study": sweep.study,
        "sweep": step.best_of,
        "sampler": sweep.sampler.name,
        "pruner": sweep.pruner.name,
        "trials": len([t for t in trials if trial_state(t).finished]),
        "complete": len([t for t in trials if trial_state(t) == TrialState.COMPLETE]),
        "epochs": epochs_spent(trials, 0, sweep.repeats),
        "best_trial": None if best is None else best.number,
        "best_value": None if best is None else first_value(best),
        "params": best_values(study),
    }


def narrative_result(spec: NarrativeSpec, scale: str, storage: str) -> NarrativeResult:
    """The stored runs of every step of a narrative study, and a verdict per claim."""
    steps: list[StepResult] = []
    store = optuna.storages.get_storage(open_storage(storage))  # one connection for every step's study
    names = {s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    for step in spec.steps:
        runs: list[TrialResult] = []
        checkpoint, confusion = "", None
        search = _search_info(spec, step, store, names) if step.best_of else None
        study_name = spec.step_study(step, scale, (search or {}).get("best_trial"))  # a best_of step: its retraining
        if study_name in names:
            study = optuna.load_study(study_name=study_name, storage=store)
            tracking = study.user_attrs.get("tracking_uri")
            runs = sorted((_trial_result(t, tracking) for t in study.trials), key=lambda r: (r.params.get("seed", 0), r.number))
            best = best_of(study.get_trials(deepcopy=False), _maximize(study))
            checkpoint = "" if best is None else _checkpoint(best, tracking)
            confusion = _confusion(best, tracking)
        steps.append(
            StepResult(
                step.name,
                step.title,
                step.setup,
                step.claim,
                dict(step.document),
                runs,
                config_to_dict(spec.step_config(step, scale, found=(search or {}).get("params"))),
                checkpoint,
                confusion,
                search,
            )
        )
    by_name = {s.name: s for s in steps}
    from studyrunner.narrative.spec import judge  # not imported by ls/show: pydantic models cost them time

    verdicts = [judge(c, by_name) for c in spec.claims]
    return NarrativeResult(
        spec.study,
        spec.title,
        spec.description.strip(),
        scale,
        dict(spec.scales.get(scale, {})),  # type: ignore[call-overload]  # scale is checked against the file's scales
        steps,
        verdicts,
        list(spec.notes),
        spec.source,
    )

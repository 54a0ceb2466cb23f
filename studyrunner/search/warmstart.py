"""What a study starts from besides its sampler: configurations the sweep enqueues (run first, in
file order) and the finished trials of an earlier study (``warm_start``) that fit this space.

Imported trials are COMPLETE trials with outcome ``imported``: TPE, GP and CMA-ES learn from them
at once, they do not count towards ``n_trials``, and ``show`` lists them as IMPORTED.
"""

from __future__ import annotations

import optuna

from studyrunner.config import RUNTIME_KEYS, TrainConfig, config_to_dict, flatten
from studyrunner.errors import StudyrunnerError
from studyrunner.search.space import distributions, optuna_params
from studyrunner.search.spec import SweepSpec
from studyrunner.states import Outcome, TrialRecord
from studyrunner.stores import open_storage

__all__ = ["enqueue_configs", "warm_start"]


def enqueue_configs(study: optuna.Study, spec: SweepSpec, base: TrainConfig) -> int:
    """Queue the sweep's ``enqueue`` entries (once: an entry already in the study is skipped); how many were new."""
    dists = distributions(spec, base)
    before = len(study.trials)
    for entry in spec.enqueue:
        params = optuna_params(flatten(entry), dists)
        if params is not None:  # validation already refused entries outside the space
            study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)
    return len(study.trials) - before


def warm_start(study: optuna.Study, spec: SweepSpec, base: TrainConfig, storage: str) -> int:
    """Add the COMPLETE trials of ``spec.warm_start.study`` whose parameters all lie in this space
    (once each); how many were added. The earlier study must have trained the same fixed
    configuration, or its values would not compare."""
    if spec.warm_start is None:
        return 0
    source = spec.warm_start.study
    try:
        earlier = optuna.load_study(study_name=source, storage=open_storage(spec.warm_start.storage or storage))
    except KeyError:
        raise StudyrunnerError(f"warm_start.study: no study named {source!r} in {spec.warm_start.storage or storage}") from None
    if len(earlier.directions) != len(spec.targets):
        raise StudyrunnerError(
            f"warm_start.study {source!r} has {len(earlier.directions)} objective(s), this sweep {len(spec.targets)}"
        )
    _check_comparable(earlier, spec, base)
    dists = distributions(spec, base)
    done = {TrialRecord.of(t.user_attrs).imported_from for t in study.get_trials(deepcopy=False)}
    added = 0
    for t in earlier.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        tag = f"{source}#{t.number}"
        params = optuna_params(t.params, dists)
        if tag in done or params is None or TrialRecord.of(t.user_attrs).outcome == Outcome.IMPORTED or not t.values:
            continue
        attrs = {"outcome": Outcome.IMPORTED.value, "imported_from": tag}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=t.values, user_attrs=attrs))
        added += 1
    return added


def _check_comparable(earlier: optuna.Study, spec: SweepSpec, base: TrainConfig) -> None:
    stored = earlier.user_attrs.get("base_config")
    if not stored:
        return
    old, new = flatten(stored), flatten(config_to_dict(base))
    skip = RUNTIME_KEYS | set(spec.space) | {"seed"}
    changed = sorted(k for k in set(old) & set(new) if k not in skip and old[k] != new[k])
    if changed:
        diffs = ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed[:6])
        raise StudyrunnerError(
            f"warm_start.study {earlier.study_name!r} trained another fixed configuration ({diffs}); "
            "its values would not compare with this study's"
        )

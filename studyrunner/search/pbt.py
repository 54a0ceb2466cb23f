"""Population-based training (``sampler: {name: pbt, ...}``) on an Optuna study.

A member of the population is a chain of trials, one per *segment* of ``interval`` epochs: trial
(member m, generation g) trains epochs ``g*interval+1 .. (g+1)*interval`` starting from the saved
state (weights, optimizer, RNG) of its parent, so the chain is one continuous run whose values may
change at every segment boundary. The study holds ``population x segments`` trials.

* Generation 0: every member draws its values at random from the sweep's space.
* At a boundary, a member whose last segment ranks in the bottom ``quantile`` of the members that
  reached that boundary *exploits* one of the top ``quantile``: its next segment starts from that
  member's state and values, and *explores*: each of its values that can change mid-training
  (``is_mutable``) is multiplied by one of ``perturb`` or, with chance ``resample``, drawn afresh.
  The others continue from their own state. Choices (optimizer, BatchNorm, ...) travel with the
  state, so ``when:`` conditions hold by construction. A diverged segment always exploits.
* The decision is made when the segment starts (``PBTSampler.before_trial``), from what the storage
  holds then, with a random generator seeded by (seed, member, generation), and is recorded in the
  trial (user attribute ``pbt``) before anything trains, so a retry repeats it exactly.
* Each member's next segment is queued by the worker that finished its segment (``advance``); the
  queue is repaired on every start and whenever it runs dry (``reconcile``), so a worker killed
  between the two loses nothing, and a segment queued twice runs once (``duplicate``).

With several workers (``--jobs``, Ray) the members run side by side and a decision ranks the
members that reached the boundary so far (asynchronous PBT).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from studyrunner.search.space import distributions
from studyrunner.search.spec import is_mutable
from studyrunner.states import TrialRecord, TrialState, trial_state

if TYPE_CHECKING:
    from studyrunner.config import TrainConfig
    from studyrunner.search.spec import SamplerSpec, SweepSpec
    from studyrunner.track.runs import Tracker

__all__ = [
    "PBTSampler",
    "is_pbt",
    "segments",
    "population_target",
    "segment_of",
    "advance",
    "reconcile",
    "duplicate",
    "inherit_state",
    "lineage_tags",
    "explore",
]

ATTR = "pbt"  # the trial's user attribute: member, generation, start, end; then the decision


def is_pbt(spec: SweepSpec) -> bool:
    return spec.sampler.name == "pbt"


def segments(spec: SweepSpec, epochs: int) -> list[tuple[int, int]]:
    """(first epoch - 1, last epoch) of each segment: ``interval`` epochs, the last one what is left."""
    step = spec.sampler.interval
    return [(s, min(s + step, epochs)) for s in range(0, epochs, step)]


def population_target(spec: SweepSpec, base: TrainConfig) -> int:
    return spec.sampler.population * len(segments(spec, base.epochs))


def segment_of(trial: optuna.trial.FrozenTrial | optuna.Trial) -> dict[str, Any] | None:
    """The trial's segment record; for a live trial as the storage holds it now (the sampler
    records its decision after the trial object read its attributes)."""
    if isinstance(trial, optuna.Trial):
        rec = trial.storage.get_trial_user_attrs(trial._trial_id).get(ATTR)
    else:
        rec = trial.user_attrs.get(ATTR)
    return rec if isinstance(rec, dict) and "member" in rec else None


class PBTSampler(optuna.samplers.BaseSampler):
    """Values decided per segment; a value the decision does not hold is drawn at random."""

    def __init__(self, spec: SweepSpec, base: TrainConfig, seed: int | None) -> None:
        self.spec, self.base = spec, base
        self.dists = distributions(spec, base)
        self.seed = seed or 0
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._values: dict[int, dict[str, Any]] = {}

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, space: dict[str, Any]) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        rec = segment_of(trial)
        if rec is None:
            return
        if "event" not in rec:  # decided once, here, before anything trains
            rec = {**rec, **decide(study, self.spec, self.dists, rec, self.seed)}
            study._storage.set_trial_user_attr(trial._trial_id, ATTR, rec)
            if rec["values"]:  # every process that opens this trial (a Ray task, say) suggests the same
                study._storage.set_trial_system_attr(trial._trial_id, "fixed_params", rec["values"])
        self._values[trial._trial_id] = dict(rec.get("values") or {})

    def sample_independent(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> Any:
        values = self._values.get(trial._trial_id, {})
        if param_name in values:
            return values[param_name]
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any) -> None:
        self._values.pop(trial._trial_id, None)


def _finished(trials: list[optuna.trial.FrozenTrial]) -> dict[tuple[int, int], optuna.trial.FrozenTrial]:
    """(member, generation) -> its segment that ran to the end (COMPLETE) or diverged (PRUNED)."""
    out = {}
    for t in trials:
        rec = segment_of(t)
        if rec is not None and trial_state(t).finished:
            out[(int(rec["member"]), int(rec["generation"]))] = t
    return out


def decide(study: optuna.Study, spec: SweepSpec, dists: dict[str, Any], rec: dict[str, Any], seed: int) -> dict[str, Any]:
    """Where segment (member, generation) starts from and with which values (see the module's text)."""
    member, gen = int(rec["member"]), int(rec["generation"])
    if gen == 0:
        return {"event": "start", "parent": None, "values": {}, "changes": {}}
    done = _finished(study.get_trials(deepcopy=False))
    sign = 1.0 if spec.objective.resolved_direction == "maximize" else -1.0
    scores = {m: sign * t.value for (m, g), t in done.items() if g == gen - 1 and t.value is not None}
    ranked = sorted(scores, key=lambda m: scores[m], reverse=True)
    k = max(1, math.floor(len(ranked) * spec.sampler.quantile)) if len(ranked) >= 2 else 0
    top, bottom = ranked[:k], ranked[len(ranked) - k :]
    rng = random.Random(f"{seed}:{member}:{gen}")
    own = done.get((member, gen - 1))
    score = scores.get(member)
    lagging = member in bottom and member not in top and score is not None and score < min(scores[m] for m in top)
    if own is not None and member in scores and not lagging:
        return {"event": "continue", "parent": own.number, "values": dict(own.params), "changes": {}, "score": score}
    if top:
        donor = done[(rng.choice(top), gen - 1)]
        values, changes = explore(donor.params, dists, spec.sampler, rng)
        donor_score = sign * scores[int(segment_of(donor)["member"])]  # type: ignore[index]
        return {
            "event": "exploit", "parent": donor.number, "values": values, "changes": changes,
            "score": score, "parent_score": donor_score,
        }  # fmt: skip
    return {"event": "restart", "parent": None, "values": {}, "changes": {}, "start": 0}  # nothing to copy: start over


def explore(
    params: dict[str, Any], dists: dict[str, Any], sampler: SamplerSpec, rng: random.Random
) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """The donor's values with each mutable range perturbed (or resampled), kept inside its range."""
    out, changes = dict(params), {}
    for name, value in params.items():
        dist = dists.get(name)
        if not is_mutable(name) or not isinstance(
            dist, (optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution)
        ):
            continue
        new = _draw(dist, rng) if rng.random() < sampler.resample else value * rng.choice(sampler.perturb)
        new = _fit(dist, new)
        if new != value:
            out[name], changes[name] = new, [value, new]
    return out, changes


def _draw(dist: Any, rng: random.Random) -> float:
    if dist.log:
        return math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
    return rng.uniform(dist.low, dist.high)


def _fit(dist: Any, value: float) -> Any:
    """Clipped into the range, on its step; an int range gives an int."""
    value = min(max(value, dist.low), dist.high)
    if dist.step:
        value = dist.low + round((value - dist.low) / dist.step) * dist.step
        value = min(value, dist.high)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return int(round(value))
    return float(value)


def _enqueue(study: optuna.Study, spec: SweepSpec, epochs: int, member: int, gen: int) -> None:
    start, end = segments(spec, epochs)[gen]
    rec = {"member": member, "generation": gen, "start": start, "end": end}
    study.enqueue_trial({}, user_attrs={ATTR: rec}, skip_if_exists=False)


def advance(study: optuna.Study, spec: SweepSpec, epochs: int, trial: optuna.trial.FrozenTrial) -> None:
    """Queue the next segment of the member whose segment just finished (its finisher alone does)."""
    rec = segment_of(trial)
    if rec is None or not trial_state(trial).finished:
        return
    member, gen = int(rec["member"]), int(rec["generation"]) + 1
    if gen >= len(segments(spec, epochs)):
        return
    for t in study.get_trials(deepcopy=False):
        other = segment_of(t)
        if other and (int(other["member"]), int(other["generation"])) == (member, gen) and trial_state(t) != TrialState.FAIL:
            return
    _enqueue(study, spec, epochs, member, gen)


def reconcile(study: optuna.Study, spec: SweepSpec, epochs: int) -> int:
    """Queue what each member needs next and nothing holds: its first segment, the one after its
    last finished segment, or a failed segment whose retries ran out. How many were queued."""
    trials = study.get_trials(deepcopy=False)
    queued = 0
    for member in range(spec.sampler.population):
        mine = [(t, rec) for t in trials if (rec := segment_of(t)) is not None and int(rec["member"]) == member]
        if any(t.state in (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING) for t, _ in mine):
            continue
        done = [int(rec["generation"]) for t, rec in mine if trial_state(t).finished]
        gen = max(done) + 1 if done else 0
        if gen < len(segments(spec, epochs)):
            _enqueue(study, spec, epochs, member, gen)
            queued += 1
    return queued


def duplicate(trial: optuna.Trial) -> bool:
    """Another trial already ran this segment to its end, or started it first."""
    rec = segment_of(trial)
    if rec is None:
        return False
    key = (int(rec["member"]), int(rec["generation"]))
    for t in trial.study.get_trials(deepcopy=False):
        other = segment_of(t)
        if other is None or t.number == trial.number or (int(other["member"]), int(other["generation"])) != key:
            continue
        if trial_state(t).finished or (t.state == optuna.trial.TrialState.RUNNING and t.number < trial.number):
            return True
    return False


def segment_start(trial: optuna.Trial) -> int | None:
    """The epoch this segment continues from (None: not a PBT trial, or it starts from scratch)."""
    rec = segment_of(trial)
    if rec is None:
        return None
    start = int(rec.get("start", 0))
    return start or None


def inherit_state(trial: optuna.Trial, folder: str, seed: int, tracker: Tracker | None) -> str:
    """Put the parent segment's state file into this segment's folder (unless the folder holds one
    already: this segment's own, from an attempt that died). Where it came from, "" if nothing to do."""
    rec = segment_of(trial)
    if rec is None or rec.get("parent") is None or not int(rec.get("start", 0)):
        return ""
    name = f"state-seed{seed}.pt"
    target = Path(folder) / name
    if target.is_file():
        return ""
    parent = trial.study.get_trials(deepcopy=False)[int(rec["parent"])]
    prec = TrialRecord.of(parent.user_attrs)
    source = Path(prec.out_dir or "") / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if prec.out_dir and source.is_file():
        shutil.copyfile(source, target)
        return str(source)
    if tracker is not None:  # the parent ran on another machine: its uploaded state
        origin = prec.first_attempt(parent.number)
        run, _ = tracker.fetch_state(origin, folder)
        if run and target.is_file():
            return f"run {run}"
    from studyrunner.errors import StudyrunnerError

    raise StudyrunnerError(f"PBT: the state of trial {parent.number} ({source}) is gone; its member cannot continue")


def lineage_tags(trial: optuna.Trial) -> dict[str, str]:
    """The member's lineage on the segment's MLflow run: member, generation, the epoch it starts
    at, the event, the parent trial and the values that changed (old and new)."""
    rec = segment_of(trial)
    if rec is None:
        return {}
    tags = {
        "pbt.member": str(rec["member"]),
        "pbt.generation": str(rec["generation"]),
        "pbt.epoch": str(rec.get("start", 0)),
        "pbt.event": str(rec.get("event", "")),
        "pbt.parent": "" if rec.get("parent") is None else str(rec["parent"]),
    }
    if rec.get("changes"):
        tags["pbt.changes"] = json.dumps(rec["changes"])[:5000]
    return tags

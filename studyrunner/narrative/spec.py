"""Narrative studies: a document's tuning story as steps (fixed configurations run with several
seeds) and claims (its conclusions, judged on our runs).

This module owns the narrative file's types, how a step becomes a config and a sweep at a given
scale, and how a claim is judged. ``runner.run_narrative`` runs the steps, results
reads their trials (``report.results.narrative_result``), the report renders them; all through the typed
objects here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, field_validator, model_validator

from studyrunner.config import ConfigError, TrainConfig, apply_overrides, config_to_dict, flatten
from studyrunner.search.spec import MAX_REPEATS, ObjectiveSpec, SweepSpec
from studyrunner.search.specfile import Problem, SpecError, StrictModel, load_spec, load_yaml

__all__ = [
    "Step",
    "Claim",
    "NarrativeSpec",
    "Verdict",
    "NOISE_FLOOR",
    "Scale",
    "is_narrative",
    "load_narrative",
    "judge",
]

Scale = Literal["full", "reduced"]
Metric = str  # best_val_acc | final_val_acc | final_train_acc | test_acc | final_gap | train_acc@N | val_acc@N
_METRIC_RE = r"^(best_val_acc|final_val_acc|final_train_acc|test_acc|final_gap|(train|val)_acc@[0-9]+)$"


class Step(StrictModel):
    """One step of a narrative: a fixed configuration run with ``repeats`` seeds."""

    name: str = Field(max_length=30, pattern=r"^[A-Za-z0-9_\-]+$")
    title: str
    setup: str = ""  # the document's setup in words
    train: dict[str, Any] = Field(default_factory=dict)  # on top of the narrative's base
    full: dict[str, Any] = Field(default_factory=dict)  # extra overrides at the full (document's) scale
    reduced: dict[str, Any] = Field(default_factory=dict)  # extra overrides at the reduced scale
    document: dict[str, float | int | str] = Field(default_factory=dict)  # the document's figures
    claim: str = ""  # what the document concludes from this step
    repeats: int | None = Field(None, ge=1, le=MAX_REPEATS)  # seeds of this step (default: the study's repeats)
    # a sweep file (relative to this file's folder): the step runs it (or resumes it) and then trains the
    # configuration its best trial found, with this step's seeds: one automatic study against the hand-tuned steps
    best_of: str = ""

    @field_validator("train", "full", "reduced", mode="before")
    @classmethod
    def _flat(cls, v: Any) -> Any:
        return flatten(v) if isinstance(v, dict) else v


class Claim(StrictModel):
    """A documented conclusion turned into a check on our runs.

    ``better``: step ``a`` beats step ``b`` on ``metric`` by more than ``margin`` and more than
    twice the standard error of the difference (reproduced), loses by that much (not
    reproduced), or neither (inconclusive). ``above``: step ``a``'s mean ``metric`` exceeds
    ``threshold`` by more than twice its standard error.
    """

    id: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    text: str
    kind: Literal["better", "above"] = "better"
    a: str
    b: str | None = None
    metric: Metric = Field(pattern=_METRIC_RE)
    margin: float = Field(0.0, ge=0)
    threshold: float | None = None
    scale_note: str = ""  # what the reduced scale can and cannot show for this claim

    @model_validator(mode="after")
    def _check(self) -> Claim:
        if self.kind == "better" and not self.b:
            raise ValueError("a 'better' claim needs b (the step it is compared with)")
        if self.kind == "above" and self.threshold is None:
            raise ValueError("an 'above' claim needs threshold")
        return self


class NarrativeSpec(StrictModel):
    study: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z0-9_\-]+$")
    title: str = ""  # the report's heading
    description: str = ""
    source_document: str = ""
    objective: ObjectiveSpec = ObjectiveSpec()
    repeats: int = Field(2, ge=2, le=MAX_REPEATS)  # seeds per step; report shows mean +- sd
    scales: dict[Scale, dict[str, Any]] = Field(default_factory=dict)
    base: dict[str, Any] = Field(default_factory=dict)  # shared by every step
    steps: list[Step] = Field(min_length=1)
    claims: list[Claim] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # where our setup differs from the document's
    data_command: str = ""  # how to get the study's data (the report's reproduce block starts with it)
    source: str = ""

    @field_validator("base", mode="before")
    @classmethod
    def _flat(cls, v: Any) -> Any:
        return flatten(v) if isinstance(v, dict) else v

    def step(self, name: str) -> Step:
        found = [s for s in self.steps if s.name == name]
        if not found:
            raise SpecError(f"{self.source}: no step named {name!r}; steps: {', '.join(s.name for s in self.steps)}")
        return found[0]

    def scale_names(self) -> list[str]:
        """The scales a step can run at (``full`` when the file names none)."""
        return list(self.scales) or ["full"]

    def check_scale(self, scale: str) -> None:
        if self.scales and scale not in self.scales:
            raise SpecError(f"{self.source}: no scale {scale!r}; scales: {', '.join(self.scales)}")

    def check(self, scale: str, overrides: Mapping[str, Any] | None = None) -> None:
        """The scale exists and every step's config is valid with ``overrides`` (before any store opens)."""
        self.check_scale(scale)
        for step in self.steps:
            self.step_config(step, scale, overrides)
            if step.best_of:  # the search it runs is a sweep file like any other: checked in full
                from studyrunner.search.spec import load_sweep

                load_sweep(self.best_of_path(step))

    def step_study(self, step: Step, scale: str, found_trial: int | None = None) -> str:
        """The Optuna study (and MLflow experiment) name of ``step`` at ``scale``. A ``best_of``
        step's runs are named after the search trial they retrain (``....trial17``): a search resumed
        later that finds a better trial retrains that one, beside the earlier retraining."""
        name = f"{self.study}.{scale}.{step.name}"
        return name if found_trial is None else f"{name}.trial{found_trial}"

    def best_of_path(self, step: Step) -> Path:
        """The sweep a ``best_of`` step runs, found beside the narrative file (or as given)."""
        path = Path(step.best_of)
        beside = Path(self.source).parent / path if self.source else path
        return beside if not path.is_absolute() and beside.is_file() else path

    def step_config(
        self, step: Step, scale: str, overrides: Mapping[str, Any] | None = None, found: Mapping[str, Any] | None = None
    ) -> TrainConfig:
        """base, then the scale's overrides, the step's, the step's at that scale, the values a
        ``best_of`` step's search found, then ``overrides``."""
        cfg = apply_overrides(TrainConfig(), self.base)
        cfg = apply_overrides(cfg, flatten(self.scales.get(scale, {})))  # type: ignore[call-overload]
        cfg = apply_overrides(cfg, step.train)
        cfg = apply_overrides(cfg, step.reduced if scale == "reduced" else step.full)
        cfg = apply_overrides(cfg, found or {})
        cfg = apply_overrides(cfg, overrides or {})
        if cfg.model.init.startswith("step:"):  # an earlier step's best checkpoint, at the same scale
            earlier = self.step(cfg.model.init.removeprefix("step:"))
            cfg = apply_overrides(cfg, {"model.init": f"study:{self.step_study(earlier, scale)}"})
        return cfg

    def step_sweep(
        self, step: Step, scale: str, found: Mapping[str, Any] | None = None, found_trial: int | None = None
    ) -> SweepSpec:
        """The step as a sweep: a grid over ``repeats`` seeds, one trial per seed (with a ``best_of``
        step's ``found`` values, those of search trial ``found_trial``)."""
        cfg = self.step_config(step, scale, found=found)
        seeds = step.repeats or self.repeats
        return SweepSpec.model_validate(
            {
                "study": self.step_study(step, scale, found_trial),
                "description": step.title,
                "objective": self.objective.model_dump(),
                "budget": {"n_trials": seeds},
                "sampler": {"name": "grid", "seed": 0},
                "pruner": {"name": "none", "no_learning_epochs": 0},
                "train": {k: v for k, v in flatten(config_to_dict(cfg)).items() if k != "seed"},
                "space": {"seed": {"choices": list(range(seeds))}},
                "source": self.source,
            }
        )


_NARRATIVE_ONLY = {"steps", "claims", "scales", "base", "notes", "source_document", "title", "data_command"}
_SWEEP_ONLY = {"space", "train", "budget", "sampler", "pruner", "max_retries"}


def is_narrative(path: str | Path) -> bool:
    """True for a narrative study file (``steps:``, or narrative keys and no sweep keys), False for
    a sweep: a narrative whose ``steps:`` is missing is told so, not read as a broken sweep."""
    keys = set(load_yaml(path))
    return "steps" in keys or bool(keys & _NARRATIVE_ONLY and not keys & _SWEEP_ONLY)


def load_narrative(path: str | Path) -> NarrativeSpec:
    """Parse and validate a narrative study: every step's config at every scale, every claim's steps."""
    return load_spec(path, NarrativeSpec, _problems)


def _problems(spec: NarrativeSpec) -> list[Problem]:
    """Unique step names, valid configs at every scale, ``step:`` inits and claims that name real steps."""
    names = [s.name for s in spec.steps]
    if len(set(names)) != len(names):
        return [(f"step names must be unique, got {names}", ("steps",))]
    for i, step in enumerate(spec.steps):
        init = flatten(step.train).get("model.init", "")
        if isinstance(init, str) and init.startswith("step:") and init.removeprefix("step:") not in names[:i]:
            earlier = ", ".join(names[:i]) or "none"
            return [
                (
                    f"step {step.name}: model.init={init} must name an earlier step; earlier steps: {earlier}",
                    ("steps", i, "train"),
                )
            ]
        for scale in spec.scale_names():
            try:
                spec.step_config(step, scale)
            except ConfigError as exc:
                return [(f"step {step.name} ({scale} scale): {exc}", ("steps", i, "train"))]
    for i, claim in enumerate(spec.claims):
        for ref in filter(None, (claim.a, claim.b)):
            if ref not in names:
                return [(f"claim {claim.id}: no step named {ref!r}; steps: {', '.join(names)}", ("claims", i))]
        problem = _claim_problem(spec, claim)
        if problem:
            return [(problem, ("claims", i))]
    return []


def _claim_problem(spec: NarrativeSpec, claim: Claim) -> str:
    """Thresholds and margins on the metrics' scale (fractions, not percent); epochs the steps run."""
    if claim.threshold is not None and not -1.0 <= claim.threshold <= 1.0:
        return (
            f"claim {claim.id}: threshold {claim.threshold:g} is not on the metric's scale; accuracies are fractions "
            f"(write {claim.threshold / 100:g} for {claim.threshold:g}%)"
        )
    if claim.margin >= 1.0:
        return f"claim {claim.id}: margin {claim.margin:g} is not on the metric's scale; accuracies are fractions (0.02 = 2 pts)"
    if "@" not in claim.metric:
        return ""
    epoch = int(claim.metric.split("@")[1])
    for ref in filter(None, (claim.a, claim.b)):
        for scale in spec.scale_names():
            epochs = spec.step_config(spec.step(ref), scale).epochs
            if not 1 <= epoch <= epochs:
                return (
                    f"claim {claim.id}: {claim.metric} refers to epoch {epoch}, "
                    f"but step {ref} runs {epochs} epochs at the {scale} scale"
                )
    return ""


# --------------------------------------------------------------------------- judging claims


class StepRuns(Protocol):
    """What judging needs of a step's runs: the finished runs' values of a metric."""

    def values(self, metric: str) -> list[float]: ...


@dataclass
class Verdict:
    id: str
    text: str
    metric: str
    a: str
    b: str | None
    a_values: list[float]
    b_values: list[float]
    difference: float | None  # mean(a) - mean(b), or mean(a) - threshold
    noise: float | None  # twice the standard error of the difference (floored)
    verdict: str  # reproduced | not reproduced | inconclusive
    note: str = ""


NOISE_FLOOR = 0.005  # a standard error below half a point is not trusted from two seeds


def _se(values: list[float]) -> float:
    if len(values) < 2:
        return math.inf
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return max(sd / math.sqrt(len(values)), NOISE_FLOOR)


def judge(claim: Claim, steps: Mapping[str, StepRuns]) -> Verdict:
    """Reproduced when the claimed effect exceeds its margin by more than twice the standard
    error, not reproduced when it falls short of it by that much, inconclusive otherwise."""
    a = steps[claim.a].values(claim.metric)
    b = steps[claim.b].values(claim.metric) if claim.b else []
    verdict = Verdict(claim.id, claim.text, claim.metric, claim.a, claim.b, a, b, None, None, "inconclusive", claim.scale_note)
    if not a or (claim.b and not b):
        verdict.note = "not enough finished runs"
        return verdict
    mean_a = sum(a) / len(a)
    if claim.kind == "above":
        diff, se, margin = mean_a - (claim.threshold or 0.0), _se(a), 0.0
    else:
        diff, se, margin = mean_a - sum(b) / len(b), (_se(a) ** 2 + _se(b) ** 2) ** 0.5, claim.margin
    verdict.difference, verdict.noise = diff, 2 * se
    if diff > margin + 2 * se:
        verdict.verdict = "reproduced"
    elif diff < margin - 2 * se:
        verdict.verdict = "not reproduced"
    return verdict

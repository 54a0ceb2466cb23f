"""Narrative studies: a document's tuning steps as studies, with its claims and the verdicts on them."""

from typing import TYPE_CHECKING

from studyrunner.lazy import exports

if TYPE_CHECKING:
    from studyrunner.narrative.runner import (
        run_narrative,
    )
    from studyrunner.narrative.spec import (
        NOISE_FLOOR,
        Claim,
        NarrativeSpec,
        Scale,
        Step,
        Verdict,
        is_narrative,
        judge,
        load_narrative,
    )

__all__ = [
    "run_narrative",
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
_HOMES = {
    "run_narrative": "runner",
    "Step": "spec",
    "Claim": "spec",
    "NarrativeSpec": "spec",
    "Verdict": "spec",
    "NOISE_FLOOR": "spec",
    "Scale": "spec",
    "is_narrative": "spec",
    "load_narrative": "spec",
    "judge": "spec",
}
__getattr__, __dir__ = exports(__name__, _HOMES)

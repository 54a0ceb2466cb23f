"""Reports: studies read into plain data (results), rendered as markdown and PNGs; the prediction gallery."""

from typing import TYPE_CHECKING

from studyrunner.lazy import exports

if TYPE_CHECKING:
    from studyrunner.report.gallery import (
        prediction_grid,
    )
    from studyrunner.report.markdown import (
        EFFECT_BINS,
        curves_info,
        effects,
        history_info,
        params_info,
        pareto_section,
        render_sweep_report,
        spend_info,
        spend_table,
    )
    from studyrunner.report.narrative_md import (
        narrative_curves_info,
        render_narrative,
    )
    from studyrunner.report.population import (
        population_info,
        population_section,
    )
    from studyrunner.report.results import (
        NarrativeResult,
        StepResult,
        StudyResult,
        StudyRow,
        TrialResult,
        best_config,
        importances,
        list_studies,
        load_study,
        narrative_result,
        pareto_front,
        study_result,
        trials_frame,
    )
    from studyrunner.report.tables import (
        is_accuracy,
        md_table,
        mean_sd,
        num,
        pct,
        value_text,
    )

__all__ = [
    "prediction_grid",
    "effects",
    "render_sweep_report",
    "history_info",
    "params_info",
    "curves_info",
    "pareto_section",
    "spend_info",
    "spend_table",
    "EFFECT_BINS",
    "render_narrative",
    "narrative_curves_info",
    "population_section",
    "population_info",
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
    "md_table",
    "pct",
    "is_accuracy",
    "value_text",
    "mean_sd",
    "num",
]
_HOMES = {
    "prediction_grid": "gallery",
    "effects": "markdown",
    "render_sweep_report": "markdown",
    "history_info": "markdown",
    "params_info": "markdown",
    "curves_info": "markdown",
    "pareto_section": "markdown",
    "spend_info": "markdown",
    "spend_table": "markdown",
    "EFFECT_BINS": "markdown",
    "render_narrative": "narrative_md",
    "narrative_curves_info": "narrative_md",
    "population_section": "population",
    "population_info": "population",
    "best_config": "results",
    "pareto_front": "results",
    "StudyRow": "results",
    "TrialResult": "results",
    "StudyResult": "results",
    "StepResult": "results",
    "NarrativeResult": "results",
    "list_studies": "results",
    "load_study": "results",
    "trials_frame": "results",
    "study_result": "results",
    "importances": "results",
    "narrative_result": "results",
    "md_table": "tables",
    "pct": "tables",
    "is_accuracy": "tables",
    "value_text": "tables",
    "mean_sd": "tables",
    "num": "tables",
}
__getattr__, __dir__ = exports(__name__, _HOMES)

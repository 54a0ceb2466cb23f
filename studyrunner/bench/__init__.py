"""Benchmarks, each with its settings block at the top: pipeline throughput, per-trial overhead,
frozen-backbone heads and the search-strategy benchmark.
"""

from typing import TYPE_CHECKING

from studyrunner.lazy import exports

if TYPE_CHECKING:
    from studyrunner.bench.frozen import (
        frozen_head,
    )
    from studyrunner.bench.overhead import (
        trial_overhead,
    )
    from studyrunner.bench.search_replay import (
        REFERENCE,
        STRATEGIES,
        TOLERANCE,
        Replay,
        Summary,
        TrialLog,
        anytime_info,
        figures,
        replay,
        run_strategies,
        summarise,
        to_target,
    )
    from studyrunner.bench.search_report import (
        render_report,
        run_search_bench,
        summary_table,
    )
    from studyrunner.bench.search_table import (
        Curve,
        Point,
        Table,
        build_table,
        config_id,
        grid_axes,
        load_table,
        save_table,
        space_conditions,
    )
    from studyrunner.bench.storage import (
        SETTINGS,
        StorageRow,
        parse_workers,
        row_line,
        storage_bench,
        storage_ratios,
    )
    from studyrunner.bench.throughput import (
        documents_pipeline,
        engine_pipeline,
        machine,
        run_bench,
    )
    from studyrunner.bench.versus import (
        plain_study,
        run_versus,
    )

__all__ = [
    "frozen_head",
    "trial_overhead",
    "TrialLog",
    "Replay",
    "Summary",
    "STRATEGIES",
    "REFERENCE",
    "TOLERANCE",
    "replay",
    "run_strategies",
    "to_target",
    "summarise",
    "figures",
    "anytime_info",
    "summary_table",
    "render_report",
    "run_search_bench",
    "Point",
    "Curve",
    "Table",
    "grid_axes",
    "space_conditions",
    "config_id",
    "load_table",
    "save_table",
    "build_table",
    "StorageRow",
    "storage_bench",
    "storage_ratios",
    "parse_workers",
    "row_line",
    "SETTINGS",
    "run_bench",
    "documents_pipeline",
    "engine_pipeline",
    "machine",
    "run_versus",
    "plain_study",
]
_HOMES = {
    "frozen_head": "frozen",
    "trial_overhead": "overhead",
    "TrialLog": "search_replay",
    "Replay": "search_replay",
    "Summary": "search_replay",
    "STRATEGIES": "search_replay",
    "REFERENCE": "search_replay",
    "TOLERANCE": "search_replay",
    "replay": "search_replay",
    "run_strategies": "search_replay",
    "to_target": "search_replay",
    "summarise": "search_replay",
    "figures": "search_replay",
    "anytime_info": "search_replay",
    "summary_table": "search_report",
    "render_report": "search_report",
    "run_search_bench": "search_report",
    "Point": "search_table",
    "Curve": "search_table",
    "Table": "search_table",
    "grid_axes": "search_table",
    "space_conditions": "search_table",
    "config_id": "search_table",
    "load_table": "search_table",
    "save_table": "search_table",
    "build_table": "search_table",
    "StorageRow": "storage",
    "storage_bench": "storage",
    "storage_ratios": "storage",
    "parse_workers": "storage",
    "row_line": "storage",
    "SETTINGS": "storage",
    "run_bench": "throughput",
    "documents_pipeline": "throughput",
    "engine_pipeline": "throughput",
    "machine": "throughput",
    "run_versus": "versus",
    "plain_study": "versus",
}
__getattr__, __dir__ = exports(__name__, _HOMES)

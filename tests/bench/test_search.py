"""The search benchmark: replay on a hand-made table (chance, learning and diverged curves), the
figures on hand-checkable cases, and a real tiny table built with the engine that resumes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from studyrunner.bench import search_replay, search_report, search_table
from studyrunner.bench.search_replay import (
    STRATEGIES,
    Replay,
    TrialLog,
    anytime_info,
    replay,
    run_strategies,
    summarise,
    to_target,
)
from studyrunner.bench.search_report import render_report, run_search_bench
from studyrunner.bench.search_table import Curve, Point, Table, build_table, config_id, grid_axes, load_table
from studyrunner.search.spec import load_sweep
from tests.conftest import sweep_spec

EPOCHS = 6
LRS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
ROOT = Path(__file__).parents[2]


def learning(final: float) -> list[Point]:
    """A curve that leaves chance at once and ends at ``final`` val_acc."""
    rise = [(1 - 0.6**e) / (1 - 0.6**EPOCHS) for e in range(1, EPOCHS + 1)]
    return [
        Point(e, math.log(10) * (1 - 0.4 * r), 0.1 + (final - 0.1) * r, 0.1 + (final - 0.1) * r, 1.0)
        for e, r in enumerate(rise, 1)
    ]


def at_chance() -> list[Point]:
    return [Point(e, math.log(10), 0.1, 0.1, 1.0) for e in range(1, EPOCHS + 1)]


def diverged(at: int = 3) -> list[Point]:
    return [*learning(0.3)[: at - 1], Point(at, math.nan, 0.1, None, 1.0)]


def synthetic(curves: dict[str, list[list[Point]]] | None = None) -> Table:
    """2 optimizers x 5 learning rates: SGD at chance at small rates, Adam best at 1e-3 and diverged at 1.0."""
    curves = curves or {
        "sgd": [at_chance(), at_chance(), learning(0.40), learning(0.50), learning(0.55)],
        "adam": [learning(0.45), learning(0.62), learning(0.58), at_chance(), diverged()],
    }
    axes = {"optim.name": list(curves), "optim.lr": LRS}
    table = Table("synthetic", EPOCHS, axes, classes=10, n_eval=1000, ordered=["optim.lr"])
    for opt, row in curves.items():
        for lr, points in zip(LRS, row, strict=True):
            params = {"optim.name": opt, "optim.lr": lr}
            table.curves[config_id(params)] = Curve(params, points, "diverged" if points[-1].val_acc is None else "completed")
    return table


def test_the_no_learning_rule_spends_fewer_epochs_and_finds_the_same_best():
    table = synthetic()
    for seed in range(5):  # 10 trials: TPE's random start-up, the same draws with and without the rule
        plain, ruled = replay(table, "tpe", seed, 10), replay(table, "tpe+no-learning", seed, 10)
        assert [t.params for t in plain.trials] == [t.params for t in ruled.trials]
        assert ruled.best == plain.best and ruled.epochs <= plain.epochs
        stopped = [t for t in ruled.trials if t.reason.startswith("no learning")]
        assert all(t.epochs == search_replay.NO_LEARNING_AFTER for t in stopped)
        assert ruled.epochs == plain.epochs - len(stopped) * (EPOCHS - search_replay.NO_LEARNING_AFTER)
    both = run_strategies(table, 16, range(5), ["tpe", "tpe+no-learning"])
    assert sum(r.epochs for r in both["tpe+no-learning"]) < sum(r.epochs for r in both["tpe"])
    assert max(r.best or 0 for r in both["tpe+no-learning"]) == table.best().best == 0.62


def test_pruned_strategies_spend_no_more_epochs_than_the_unpruned_search():
    runs = run_strategies(synthetic(), 16, range(5))
    unpruned = sum(r.epochs for r in runs["tpe"])
    for name in STRATEGIES:
        assert all(r.epochs <= 16 * EPOCHS for r in runs[name])
        if name not in search_replay.UNPRUNED:
            assert sum(r.epochs for r in runs[name]) <= unpruned, name


def test_the_anytime_curve_never_decreases_and_ends_at_the_study_total():
    for name in STRATEGIES:
        run = replay(synthetic(), name, 3, 16)
        bests = [b for _, _, b in run.anytime() if b is not None]
        assert bests == sorted(bests) and bests[-1] == run.best
        assert run.anytime()[-1][:2] == (run.epochs, run.seconds)


def test_the_same_seed_replays_the_same_study():
    table = synthetic()
    for name in STRATEGIES:
        assert replay(table, name, 7, 12) == replay(table, name, 7, 12)


def test_a_diverged_curve_ends_pruned_and_pays_its_epochs():
    table = synthetic({"adam": [diverged(3)] * 5})
    run = replay(table, "tpe", 0, 4)
    assert [t.state for t in run.trials] == ["PRUNED"] * 4 and run.best is None
    assert run.epochs == 12 and all(t.value is None for t in run.trials)


def test_a_curve_at_chance_is_stopped_after_the_rules_epochs_with_its_reason():
    run = replay(synthetic({"sgd": [at_chance()] * 5}), "tpe+no-learning", 0, 3)
    assert all(t.state == "PRUNED" and t.epochs == 2 and t.reason.startswith("no learning") for t in run.trials)


def _log(params: str, state: str, epochs: int, value: float | None) -> TrialLog:
    return TrialLog({"p": params}, state, epochs, 2.0 * epochs, value)


def test_epochs_to_target_on_a_hand_checked_study():
    run = Replay("x", 0, [_log("a", "COMPLETE", 6, 0.30), _log("b", "PRUNED", 2, None), _log("c", "COMPLETE", 6, 0.55)])
    assert [a[0] for a in run.anytime()] == [6, 8, 14]
    assert to_target(run, 0.30) == (6, 12.0, True)
    assert to_target(run, 0.50) == (14, 28.0, True)
    assert to_target(run, 0.90) == (14, 28.0, False)  # never reached: the whole cost counts


def test_summarise_measures_each_strategy_against_the_unpruned_reference():
    tpe = [
        Replay("tpe", 0, [_log("a", "COMPLETE", 6, 0.50), _log("b", "COMPLETE", 6, 0.60)]),  # best 0.60 at 12
        Replay("tpe", 1, [_log("a", "COMPLETE", 6, 0.62), _log("b", "COMPLETE", 6, 0.40)]),  # best 0.62 at 6
    ]
    fast = [Replay("fast", 0, [_log("a", "PRUNED", 2, None), _log("b", "COMPLETE", 6, 0.61)])] * 2
    reference, rows = summarise({"tpe": tpe, "fast": fast})
    assert reference == pytest.approx(0.61)  # target 0.60
    ref, quick = rows
    assert ref.to_target == (9.0, pytest.approx(math.sqrt(18))) and ref.share == pytest.approx(9 / 12)
    assert quick.to_target == (8.0, 0.0) and quick.reached == 2 and quick.share == pytest.approx(8 / 12)
    assert quick.pruned == 1.0 and quick.epochs == (8.0, 0.0)


def test_a_seed_that_stopped_the_winning_configuration_is_counted_as_lost():
    tpe = [Replay("tpe", 0, [_log("a", "COMPLETE", 6, 0.60)])]
    stopped = TrialLog({"p": "a"}, "PRUNED", 2, 4.0, None, "pruned after epoch 2", unpruned=0.60)
    greedy = [
        Replay("greedy", 0, [stopped, _log("b", "COMPLETE", 6, 0.40)]),
        Replay("greedy", 1, [_log("b", "COMPLETE", 6, 0.4)]),
    ]
    _, (_, row) = summarise({"tpe": tpe, "greedy": greedy})
    assert row.reached == 0 and row.lost == 1 and row.cut_short == 1 and row.to_target == (7.0, pytest.approx(math.sqrt(2)))


def test_anytime_info_averages_the_seeds_where_each_has_a_complete_trial():
    a = Replay("x", 0, [_log("a", "COMPLETE", 2, 0.2), _log("b", "COMPLETE", 2, 0.4)])
    b = Replay("x", 1, [_log("a", "PRUNED", 1, None), _log("b", "COMPLETE", 2, 0.6)])
    xs, ys = anytime_info([a, b])
    assert xs == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [round(y, 6) if not math.isnan(y) else None for y in ys] == [None, None, None, 0.4, 0.5]


def test_the_grid_discretises_floats_and_keeps_choices():
    spec = load_sweep(ROOT / "sweeps/search_bench.yaml")
    axes = grid_axes(spec, spec.base_config(), 7)
    assert axes["optim.name"] == ["sgd", "adam"] and axes["sched.name"] == ["none", "cosine", "step", "plateau"]
    lrs = axes["optim.lr"]
    assert len(lrs) == 7 and lrs[0] == 1e-5 and lrs[-1] == 0.1 and lrs[1] == pytest.approx(4.64159e-5)
    assert all(b / a == pytest.approx(10 ** (2 / 3), rel=1e-5) for a, b in zip(lrs, lrs[1:], strict=False))


def test_a_wider_space_trains_only_what_it_adds_and_conditional_values_go_where_they_hold(
    tmp_path, tiny_train, tiny_splits, monkeypatch
):
    lr = "  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
    narrow = sweep_spec(tmp_path, tiny_train, space="space:\n" + lr + "  sched.name: {choices: [none]}\n")
    wide = sweep_spec(
        tmp_path,
        tiny_train,
        space="space:\n" + lr + "  sched.name: {choices: [none, step]}\n"
        "  sched.step_size: {choices: [1, 2], when: {sched.name: step}}\n",
    )
    path, over = tmp_path / "table.json", {"epochs": 2}
    trained: list[tuple[float, str, int]] = []
    real_fit = search_table.fit

    def counting_fit(cfg, splits, on_epoch=None):
        trained.append((cfg.optim.lr, cfg.sched.name, cfg.sched.step_size))
        return real_fit(cfg, splits, on_epoch)

    monkeypatch.setattr(search_table, "fit", counting_fit)
    build_table(narrow, over, None, path, grid_points=2, log=lambda m: None, splits=tiny_splits)
    assert len(trained) == 2 and {t[1] for t in trained} == {"none"}
    table = build_table(wide, over, None, path, grid_points=2, log=lambda m: None, splits=tiny_splits)
    assert len(trained) == 6 and {(t[1], t[2]) for t in trained[2:]} == {("step", 1), ("step", 2)}  # the none ones kept
    configs = table.configs()
    assert len(configs) == 6 and all(("sched.step_size" in c) == (c["sched.name"] == "step") for c in configs)
    run = replay(table, "random", 0, 12)
    assert all(("sched.step_size" in t.params) == (t.params["sched.name"] == "step") for t in run.trials)
    assert {t.params["sched.name"] for t in run.trials} == {"none", "step"}
    markdown = "\n".join(search_report._table_md(table))
    assert "| none |" in markdown and "| step, sched.step_size=2 |" in markdown and "| - |" not in markdown
    # the narrow sweep again: its grid alone, the wider curves kept in the file
    again = build_table(narrow, over, None, path, grid_points=2, log=lambda m: None, splits=tiny_splits)
    assert len(trained) == 6 and len(again.in_grid()) == 2 and len(again.curves) == 6


def test_a_condition_on_a_fixed_train_key_is_decided_as_the_sampler_decides_it(tmp_path, tiny_train):
    from studyrunner.bench.search_table import space_conditions

    space = (
        "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n  sched.name: {choices: [none, step]}\n"
        "  sched.step_size: {choices: [1, 2], when: {sched.name: step}}\n"
        "  optim.momentum: {choices: [0.5, 0.9], when: {optim.name: sgd}}\n"
    )
    for optimizer, has_momentum in (("adam", False), ("sgd", True)):
        spec = sweep_spec(tmp_path, tiny_train.replace("name: adam", f"name: {optimizer}"), space=space)
        axes = grid_axes(spec, spec.base_config(), 2)
        when = space_conditions(spec, axes)
        assert when == {"sched.step_size": {"sched.name": "step"}}  # the train key's condition is decided, not kept
        assert ("optim.momentum" in axes) == has_momentum


def test_a_table_is_built_with_the_engine_and_resumes(tmp_path, tiny_train, tiny_splits, monkeypatch):
    space = "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n  optim.name: {choices: [adam]}\n"
    spec = sweep_spec(tmp_path, tiny_train, space=space)
    path, over = tmp_path / "table.json", {"epochs": 2}
    calls: list[str] = []
    real_fit = search_table.fit

    def counting_fit(cfg, splits, on_epoch=None):
        calls.append(f"{cfg.optim.lr:g}")
        return real_fit(cfg, splits, on_epoch)

    def stop_after_first(message: str) -> None:
        if message.startswith("[1/"):
            raise KeyboardInterrupt

    monkeypatch.setattr(search_table, "fit", counting_fit)
    with pytest.raises(KeyboardInterrupt):  # interrupted after the first configuration was saved
        build_table(spec, over, None, path, grid_points=2, log=stop_after_first, splits=tiny_splits)
    assert len(json.loads(path.read_text())["curves"]) == 1
    table = build_table(spec, over, None, path, grid_points=2, log=lambda m: None, splits=tiny_splits)
    assert calls == ["0.001", "0.01"] and len(table.curves) == 2
    assert table.classes == 4 and table.n_eval == 64 and table.setup["train_images"] == 256
    assert all(len(c.points) == 2 and c.outcome == "completed" for c in table.curves.values())
    assert table.ordered == ["optim.lr"] and table.axes["optim.name"] == ["adam"]
    again = build_table(spec, over, None, path, grid_points=2, log=lambda m: None)  # no splits: it must not need data
    assert calls == ["0.001", "0.01"] and again.curves == table.curves
    assert load_table(path, "another setup") is None

    def no_training(*args: object) -> None:
        raise AssertionError("trained")

    monkeypatch.setattr(search_table, "fit", no_training)
    budget = sweep_spec(tmp_path, tiny_train, head="budget: {n_trials: 3}\n", space=space, name="other")
    assert build_table(budget, over, None, path, grid_points=2, log=lambda m: None).curves == table.curves  # replay only
    messages: list[str] = []
    with pytest.raises(AssertionError, match="trained"):  # other epochs: other curves
        build_table(spec, {"epochs": 3}, None, path, grid_points=2, log=messages.append, splits=tiny_splits)
    assert "starting afresh" in messages[0]


def test_run_search_bench_writes_the_report_figure_and_table(tmp_path, tiny_train):
    head = "budget: {n_trials: 4}\n"
    space = "space:\n  optim.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n"
    spec_path = Path(sweep_spec(tmp_path, tiny_train, head=head, space=space).source or "")
    out = tmp_path / "out"
    figures = run_search_bench(spec_path, {"epochs": 2}, None, out, seeds=2, grid_points=2, log=lambda m: None)
    assert {"reference_best", "target", "tpe.share", "tpe+sha.to_target_mean"} <= set(figures)
    assert figures["tpe.share"] == pytest.approx(figures["tpe.to_target_mean"] / figures["tpe.epochs_mean"])
    assert figures["table_configs"] == 2 and (out / "anytime.png").stat().st_size > 0
    readme = (out / "README.md").read_text()
    assert "| `tpe+median+no-learning` |" in readme and "![" in readme
    assert readme.rstrip().endswith(f"studyrunner bench search {spec_path}\n```")


def test_the_report_names_the_winner_and_its_share():
    table = synthetic()
    table.setup = {"train_images": 2000, "val_images": 1000, "model": "m", "training_seed": 0}
    reference, rows = summarise(run_strategies(table, 16, range(3)))
    spec = load_sweep(ROOT / "sweeps/search_bench.yaml")
    text = render_report(spec, "sweeps/search_bench.yaml", table, reference, rows, 16, 3, "anytime.png")
    winner = min((s for s in rows if s.reached == s.seeds), key=lambda s: s.share)
    assert f"`{winner.name}` reached it in every seed with the smallest share" in text
    assert "3 of the 10 configurations never left chance level and 1 diverged" in text

"""Population-based training (``sampler: {name: pbt}``) on tiny synthetic data: the copied state is
exact, explored values stay in their ranges and conditions, lineage is recorded, a SIGKILL loses
and duplicates no member, and the report draws the population's schedule."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from studyrunner.engine.checkpoint import load_checkpoint
from studyrunner.engine.fit import fit
from studyrunner.report.markdown import render_study
from studyrunner.report.results import study_result
from studyrunner.search.driver import RunOptions, run_study
from studyrunner.search.pbt import explore, segment_of
from studyrunner.search.spec import SamplerSpec, load_sweep
from studyrunner.states import TrialState, trial_state
from tests.conftest import write_sweep

POP, INTERVAL, EPOCHS = 4, 2, 6  # 4 members x 3 segments = 12 trials


def _pbt_sweep(tmp_path: Path, tiny_train: str, name: str = "pop", extra: str = "") -> Path:
    train = tiny_train.replace("epochs: 3", f"epochs: {EPOCHS}").replace("optim: {name: adam, lr: 0.003}", "optim: {lr: 0.003}")
    return write_sweep(
        tmp_path,
        f"study: {name}\nsampler: {{name: pbt, population: {POP}, interval: {INTERVAL}, seed: 0{extra}}}\n"
        "pruner: {name: none}\n" + train + "space:\n"
        "  optim.name: {choices: [sgd, adam]}\n"
        "  optim.lr: {low: 1.0e-5, high: 5.0e-2, log: true}\n"
        "  optim.momentum: {low: 0.0, high: 0.95, when: {optim.name: sgd}}\n"
        "  model.dropout.3: {low: 0.0, high: 0.5}\n",
        f"{name}.yaml",
    )


def _opts(tmp_path: Path, **kw) -> RunOptions:
    return RunOptions(storage=f"sqlite:///{tmp_path / 'optuna.db'}", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", **kw)


def _segments(study: optuna.Study) -> dict[tuple[int, int], list[optuna.trial.FrozenTrial]]:
    out: dict[tuple[int, int], list[optuna.trial.FrozenTrial]] = {}
    for t in study.trials:
        rec = segment_of(t)
        if rec is not None and trial_state(t) == TrialState.COMPLETE:
            out.setdefault((rec["member"], rec["generation"]), []).append(t)
    return out


def test_a_copied_state_continues_exactly_as_the_run_it_came_from(tmp_path, tiny_splits, tiny_config):
    """Exploit copies weights, optimizer and RNG: the copy's network gives the same logits, and
    continuing it with the same values retraces the run that never stopped, to the last bit."""
    cfg = replace(tiny_config, optim=replace(tiny_config.optim, name="sgd", momentum=0.9, lr=0.01))
    straight = fit(replace(cfg, epochs=3, out_dir=str(tmp_path / "straight")), tiny_splits)
    fit(replace(cfg, epochs=2, out_dir=str(tmp_path / "parent")), tiny_splits)
    for child in ("child", "perturbed"):
        (tmp_path / child).mkdir()
        shutil.copyfile(tmp_path / "parent" / "state-seed0.pt", tmp_path / child / "state-seed0.pt")

    copy = fit(replace(cfg, epochs=2, out_dir=str(tmp_path / "child")), tiny_splits, resume=True, segment_start=2)
    assert copy.resumed_from == 2 and [r.epoch for r in copy.history] == [1, 2]  # the parent's epochs, nothing trained
    images = tiny_splits.val.images[:16].float() / 255
    a, b = load_checkpoint(tmp_path / "parent" / "last.pt"), load_checkpoint(tmp_path / "child" / "last.pt")
    with torch.no_grad():
        assert torch.equal(a.model(images), b.model(images))

    shutil.copyfile(tmp_path / "parent" / "state-seed0.pt", tmp_path / "child" / "state-seed0.pt")
    same = fit(replace(cfg, epochs=3, out_dir=str(tmp_path / "child")), tiny_splits, resume=True, segment_start=2)
    assert same.history[2].train_loss == straight.history[2].train_loss  # RNG and optimizer state came along
    assert same.history[2].val_loss == straight.history[2].val_loss
    assert same.best_epoch == 3  # a segment's best counts its own epochs only

    faster = replace(cfg, epochs=3, out_dir=str(tmp_path / "perturbed"), optim=replace(cfg.optim, lr=0.012, momentum=0.5))
    moved = fit(faster, tiny_splits, resume=True, segment_start=2)
    assert moved.history[2].lr == pytest.approx(0.012) and moved.history[1].lr == pytest.approx(0.01)
    assert moved.history[2].train_loss != straight.history[2].train_loss


def test_explored_values_stay_inside_their_ranges_and_steps():
    dists = {
        "optim.lr": optuna.distributions.FloatDistribution(1e-5, 5e-2, log=True),
        "model.dropout.3": optuna.distributions.FloatDistribution(0.0, 0.5, step=0.05),
        "augment.brightness": optuna.distributions.FloatDistribution(0.0, 0.5),
        "optim.name": optuna.distributions.CategoricalDistribution(["sgd", "adam"]),
        "sched.threshold": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),  # not mutable mid-run
    }
    params = {"optim.lr": 5e-2, "model.dropout.3": 0.5, "augment.brightness": 0.0, "optim.name": "sgd", "sched.threshold": 1e-3}
    sampler = SamplerSpec(name="pbt", perturb=(0.5, 2.0), resample=0.3)
    moved = set()
    for seed in range(200):
        out, changes = explore(params, dists, sampler, random.Random(seed))
        assert out["optim.name"] == "sgd" and out["sched.threshold"] == 1e-3  # choices and fixed ranges travel as they are
        for name, dist in dists.items():
            if name in ("optim.name", "sched.threshold"):
                continue
            assert dist.low <= out[name] <= dist.high, (name, out[name])
        assert round(out["model.dropout.3"] / 0.05, 6).is_integer()
        assert all(out[k] == new and params[k] == old for k, (old, new) in changes.items())
        moved |= set(changes)
    assert moved == {"optim.lr", "model.dropout.3", "augment.brightness"}  # every mutable range did move


def test_a_population_exploits_records_lineage_and_its_report_draws_the_schedule(tmp_path, tiny_train):
    spec = load_sweep(_pbt_sweep(tmp_path, tiny_train))
    outcome = run_study(spec, _opts(tmp_path))
    study = outcome.study
    segments = _segments(study)
    assert sorted(segments) == [(m, g) for m in range(POP) for g in range(EPOCHS // INTERVAL)]
    assert all(len(v) == 1 for v in segments.values()) and len(study.trials) == POP * EPOCHS // INTERVAL
    dists = study.trials[0].distributions | {k: v for t in study.trials for k, v in t.distributions.items()}
    for t in study.trials:  # inside the ranges; momentum exactly when the optimizer is sgd
        assert ("optim.momentum" in t.params) == (t.params["optim.name"] == "sgd"), t.params
        assert all(d.low <= t.params[k] <= d.high for k, d in dists.items() if k in t.params and hasattr(d, "low"))
    recs = {t.number: segment_of(t) for t in study.trials}
    exploits = [t for t in study.trials if recs[t.number]["event"] == "exploit"]
    assert exploits, "the lagging members never copied a leader"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    by_number = {t.number: t for t in study.trials}
    for t in exploits:
        rec, parent = recs[t.number], by_number[recs[t.number]["parent"]]
        assert parent.value >= rec["score"]  # it copied a member that did better
        assert parent.params["optim.name"] == t.params["optim.name"]  # choices travel with the state
        tags = client.get_run(t.user_attrs["mlflow_run_id"]).data.tags
        assert tags["pbt.event"] == "exploit" and tags["pbt.parent"] == str(parent.number)
        assert tags["pbt.epoch"] == str(rec["start"]) and json.loads(tags["pbt.changes"]) == rec["changes"]
        for name, (old, new) in rec["changes"].items():
            assert parent.params[name] == old and t.params[name] == new
        history = json.loads((Path(t.user_attrs["out_dir"]) / "history.json").read_text())
        inherited = json.loads((Path(parent.user_attrs["out_dir"]) / "history.json").read_text())
        assert history[: rec["start"]] == inherited[: rec["start"]]  # its curve begins as its parent's
        assert [r["epoch"] for r in history] == list(range(1, rec["end"] + 1))
        assert t.user_attrs["epochs"] == rec["end"] - rec["start"]  # it trained its own segment only
    finals = [t for (m, g), (t,) in segments.items() if g == EPOCHS // INTERVAL - 1]
    learned = [t.value for t in finals]
    assert max(learned) >= 0.75  # the population learned the tiny task

    result = study_result(study)
    (tmp_path / "report").mkdir()
    text = render_study(result, tmp_path / "report")
    assert "### Population (PBT)" in text and "![learning-rate schedule the population found](pop_population.png)" in text
    assert (tmp_path / "report" / "pop_population.png").stat().st_size > 10_000
    first = exploits[0]
    assert f"trial {recs[first.number]['parent']} (member " in text  # the lineage table names whom it copied


def _finished(storage: str, name: str) -> int:
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return 0
    return sum(1 for t in study.trials if trial_state(t) == TrialState.COMPLETE)


@pytest.mark.long
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_population_resumes_with_every_member_once(tmp_path, tiny_train, sig):
    """SIGKILL (heartbeats go stale) or Ctrl-C (the segment INTERRUPTED, queued again) mid-population,
    then the same command with two workers: every (member, segment) completes exactly once, no trial
    outside the population trains, and every member's curve runs through all epochs."""
    sweep = _pbt_sweep(tmp_path, tiny_train, "killed")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    command = [sys.executable, "-m", "studyrunner", "run", str(sweep), "--storage", storage, "--tracking-uri", "none"]
    env = {**__import__("os").environ, "STUDYRUNNER_HEARTBEAT_S": "1", "STUDYRUNNER_GRACE_S": "3"}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while _finished(storage, "killed") < POP + 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.3)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert 0 < _finished(storage, "killed") < POP * EPOCHS // INTERVAL
    time.sleep(4)  # past the grace period: the killed segment's worker is dead
    res = subprocess.run([*command, "--jobs", "2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    study = optuna.load_study(study_name="killed", storage=storage)
    segments = _segments(study)
    assert sorted(segments) == [(m, g) for m in range(POP) for g in range(EPOCHS // INTERVAL)]
    assert all(len(v) == 1 for v in segments.values()), {k: [t.number for t in v] for k, v in segments.items()}
    assert not [t for t in study.trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]
    strays = [t.number for t in study.trials if segment_of(t) is None and trial_state(t) != TrialState.CANCELLED]
    assert not strays, strays  # every trial that trained was a segment of a member
    for (_, g), (t,) in segments.items():
        if g == EPOCHS // INTERVAL - 1:
            history = json.loads((Path(t.user_attrs["out_dir"]) / "history.json").read_text())
            assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (("pruner: {name: none}", "pruner: {name: median}"), "pruner.name must be none"),
        (("optim: {lr: 0.003}", "optim: {lr: 0.003}\n  sched: {name: step}"), "leave sched.name none"),
        (("sampler: {name: pbt", "repeats: 2\nsampler: {name: pbt"), "repeats must be 1"),
        (("  optim.lr: {low: 1.0e-5, high: 5.0e-2, log: true}\n", ""), None),  # momentum and dropout remain: valid
        (("population: 4", "population: 1"), "population"),
    ],
)
def test_a_pbt_sweep_it_cannot_run_is_refused_naming_the_key(tmp_path, tiny_train, change, says):
    from studyrunner.search.specfile import SpecError

    path = _pbt_sweep(tmp_path, tiny_train)
    path.write_text(path.read_text().replace(*change))
    if says is None:
        load_sweep(path)
        return
    with pytest.raises(SpecError, match=says):
        load_sweep(path)


def test_a_pbt_space_with_nothing_that_can_change_mid_training_is_refused(tmp_path, tiny_train):
    from studyrunner.search.specfile import SpecError

    train = tiny_train.replace("optim: {name: adam, lr: 0.003}", "optim: {lr: 0.003}")
    path = write_sweep(tmp_path, f"study: p\nsampler: {{name: pbt}}\n{train}space:\n  optim.name: {{choices: [sgd, adam]}}\n")
    with pytest.raises(SpecError, match="needs a range"):
        load_sweep(path)

"""Trials as Ray tasks on a real local Ray instance, one for the whole session (4 logical CPUs and
1 logical GPU, on loopback): fractional GPUs bound how many trials run at once, a SIGKILLed worker's
trial is retried from its saved epoch, the pruner judges inside the task, and bad flags and
resources are refused with one line."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from studyrunner.cli.main import app
from studyrunner.errors import StudyrunnerError
from studyrunner.search.driver import RunOptions, run_study
from studyrunner.search.spec import load_sweep
from studyrunner.search.specfile import SpecError
from studyrunner.states import TrialRecord, TrialState, trial_state
from studyrunner.stores import setup_lock
from tests.conftest import sweep_spec, write_sweep

ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def ray_instance():
    """One Ray instance for every test here; the library joins it instead of starting its own."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    previous = signal.getsignal(signal.SIGTERM)
    ray.init(
        address="local",  # a fresh instance, never a cluster this machine happens to run
        num_cpus=4,
        num_gpus=1,  # logical: Ray hands out GPU ids whether or not the machine has one
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        _node_ip_address="127.0.0.1",
    )
    signal.signal(signal.SIGTERM, previous)
    yield ray
    ray.shutdown()


def _opts(tmp_path, **kw):
    return RunOptions(storage=f"sqlite:///{tmp_path / 'optuna.db'}", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", **kw)


def _runs(tmp_path, study):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id])
    parents = [r for r in runs if r.data.tags.get("studyrunner.role") == "parent"]
    return client, parents, [r for r in runs if r.data.tags.get("studyrunner.role") == "trial"]


def _max_overlap(spans):
    """The most spans open at one moment (an end before a start at the same instant)."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.long
def test_quarter_gpu_trials_run_four_at_a_time_and_their_runs_say_where(ray_instance, tmp_path, tiny_train, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tasks' runs/ lands in the driver's folder: here
    head = "budget: {n_trials: 8}\nsampler: {name: random, seed: 3}\nresources: {cpus: 0.5, gpus: 0.25}\n"
    spec = sweep_spec(tmp_path, tiny_train.replace("epochs: 3", "epochs: 2"), head=head, name="quarter")
    out = run_study(spec, _opts(tmp_path, ray="local"))
    assert out.counts == {TrialState.COMPLETE: 8}
    assert max(t.value for t in out.study.trials) > 0.5  # learned: chance is 0.25

    client, parents, trials = _runs(tmp_path, "quarter")
    assert len(parents) == 1 and len(trials) == 8 and parents[0].info.status == "FINISHED"
    in_tasks = _max_overlap([(r.info.start_time, r.info.end_time) for r in trials])  # the runs start and end in the tasks
    in_flight = _max_overlap([(t.datetime_start, t.datetime_complete) for t in out.study.trials])  # asked .. told
    assert in_tasks <= 4 and 2 <= in_flight <= 4, (in_tasks, in_flight)
    node = ray.get_runtime_context().get_node_id()
    for r in trials:
        tags = r.data.tags
        assert r.info.status == "FINISHED" and tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert tags["ray.node_id"] == node and tags["resources.cpus"] == "0.5" and tags["resources.gpus"] == "0.25"
        assert tags["cuda_visible_devices"] == "0"  # the logical GPU Ray gave the task
        assert tags["device"] == ("cuda" if _has_cuda() else "cpu")  # auto: the GPU Ray gave it, where there is one
        assert r.data.params["threads"] == "1"  # half a CPU: one torch thread
    assert {t.user_attrs["worker"] for t in out.study.trials} != {f"{os.uname().nodename}:{os.getpid()}"}  # not here


def _has_cuda():
    import torch

    return torch.cuda.is_available()


def _wait_for_epoch(storage, study, epoch, ended, deadline_s=240):
    """The study's first running trial once it reported ``epoch`` (and its worker), before ``ended()``."""
    deadline = time.monotonic() + deadline_s
    with setup_lock():  # the driver creates the tables under it: never both at once
        storage = optuna.storages.RDBStorage(storage)
    while time.monotonic() < deadline and not ended():
        time.sleep(0.1)
        try:
            trials = optuna.load_study(study_name=study, storage=storage).get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:  # not created yet
            continue
        ready = [t for t in trials if len(t.intermediate_values) >= epoch and t.user_attrs.get("worker")]
        if ready:
            return ready[0]
    raise AssertionError(f"no trial of {study} reached epoch {epoch} before its run ended or {deadline_s} s passed")


@pytest.mark.long
def test_a_sigkilled_worker_s_trial_is_retried_from_its_saved_epoch(ray_instance, tmp_path, tiny_train, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = tiny_train.replace("epochs: 3", "epochs: 8").replace("batch_size: 16", "batch_size: 2") + "  state_every: 1\n"
    head = "budget: {n_trials: 1}\nsampler: {name: random, seed: 1}\nresources: {cpus: 1}\n"
    spec = sweep_spec(tmp_path, train, head=head, space="space:\n  optim.lr: {low: 1.0e-3, high: 3.0e-3}\n", name="kill")
    opts = _opts(tmp_path, ray="auto")
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(run_study, spec, opts)
        try:
            victim = _wait_for_epoch(opts.storage, "kill", 2, running.done)
        except AssertionError:
            running.result(timeout=0)  # the study's own error, if it ended with one
            raise
        os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)  # the Ray worker training it
        out = running.result(timeout=300)

    study = out.study
    assert out.counts == {TrialState.FAIL: 1, TrialState.COMPLETE: 1}
    killed, retry = study.trials
    assert killed.number == victim.number and killed.state == optuna.trial.TrialState.FAIL
    why = TrialRecord.of(killed.user_attrs).fail_reason
    assert "Ray task died with its worker or node" in why, why
    record = TrialRecord.of(retry.user_attrs)
    assert retry.params == killed.params and record.retry_of == killed.number and record.origin == killed.number
    assert record.resumed_from_epoch is not None and record.resumed_from_epoch >= 2
    assert retry.value > 0.5  # learned

    client, parents, trials = _runs(tmp_path, "kill")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert not [r for r in trials if r.info.status == "RUNNING"]
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    dead = client.get_run(TrialRecord.of(killed.user_attrs).mlflow_run_id)
    assert dead.info.status == "KILLED" and dead.data.tags["state"] == "FAIL"
    steps = [m.step for m in client.get_metric_history(record.mlflow_run_id, "val_acc")]
    assert steps == list(range(1, 9))  # one continuous history in the retry's run
    # the epochs the killed attempt trained came back from its state file, not from training them again:
    # their measured seconds are the killed attempt's, to the bit
    before = {m.step: m.value for m in client.get_metric_history(dead.info.run_id, "epoch_seconds")}
    after = {m.step: m.value for m in client.get_metric_history(record.mlflow_run_id, "epoch_seconds")}
    assert before and all(after[step] == seconds for step, seconds in before.items())
    assert not list((tmp_path / "runs" / "checkpoints" / "kill" / f"trial-{killed.number}").glob("state-*.pt"))  # done


@pytest.mark.long
def test_the_pruner_judges_each_epoch_inside_the_task(ray_instance, tmp_path, tiny_train, monkeypatch):
    monkeypatch.chdir(tmp_path)
    head = (
        "budget: {n_trials: 1}\npruner: {name: threshold, lower: 0.9, no_learning_epochs: 0}\n"
        "enqueue:\n  - {optim.lr: 1.0e-7}\n"  # far too small to learn: below the threshold after epoch 1
    )
    space = "space:\n  optim.lr: {low: 1.0e-7, high: 1.0e-2, log: true}\n"
    spec = sweep_spec(tmp_path, tiny_train, head=head, space=space, name="prune")
    out = run_study(spec, _opts(tmp_path, ray="auto", cpus_per_trial=1))
    (trial,) = out.study.trials
    assert trial_state(trial) == TrialState.PRUNED and list(trial.intermediate_values) == [1]
    assert trial.intermediate_values[1] < 0.9
    assert TrialRecord.of(trial.user_attrs).reason.startswith("pruned after epoch 1")
    _, parents, trials = _runs(tmp_path, "prune")
    assert len(parents) == 1 and [r.info.status for r in trials] == ["KILLED"] and trials[0].data.tags["state"] == "PRUNED"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ray", "local", "--gpus-per-trial", "-1"], "--gpus-per-trial -1: must be >= 0"),
        (["--ray", "local", "--cpus-per-trial", "0"], "--cpus-per-trial 0: must be > 0"),
        (["--ray", "local", "--gpus-per-trial", "1.5"], "a share above 1 must be a whole number"),
        (["--ray", "local", "--jobs", "2"], "--ray places the trials itself"),
        (["--gpus-per-trial", "0.5"], "give --ray too"),
        (["--ray", "nowhere"], "--ray 'nowhere': give local (a fresh Ray instance on this machine), auto"),
    ],
)
def test_bad_ray_flags_are_refused_with_one_line(tmp_path, tiny_train, flags, message):
    sweep = write_sweep(tmp_path, f"study: flags\n{tiny_train}space:\n  optim.lr: {{low: 1.0e-3, high: 1.0e-2}}\n")
    store = ["--storage", f"sqlite:///{tmp_path / 'o.db'}", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    res = CliRunner().invoke(app, ["run", str(sweep), *store, *flags])
    text = " ".join(res.output.split())  # one message, however wide the terminal
    assert res.exit_code == 1 and text.startswith("error: ") and text.count("error:") == 1 and message in text, res.output
    assert not (tmp_path / "o.db").exists()  # refused before any store was touched


@pytest.mark.parametrize(
    ("resources", "fragment"),
    [
        ("{cpus: 0}", "greater than 0"),
        ("{gpus: -0.5}", "greater than or equal to 0"),
        ("{gpus: 1.5}", "a share above 1 must be a whole number"),
        ("{gpu: 1}", "gpu"),
    ],
)
def test_bad_resources_are_refused_with_file_and_line(tmp_path, tiny_train, resources, fragment):
    path = write_sweep(tmp_path, f"study: res\nresources: {resources}\n{tiny_train}")
    with pytest.raises(SpecError) as err:
        load_sweep(path)
    msg = str(err.value)
    assert str(path) in msg and "line 2" in msg and "resources" in msg and fragment in msg, msg


def test_resources_default_to_one_cpu_and_no_gpu(tmp_path, tiny_train):
    spec = load_sweep(write_sweep(tmp_path, f"study: res\n{tiny_train}"))
    assert (spec.resources.cpus, spec.resources.gpus) == (1.0, 0.0)
    spec = load_sweep(write_sweep(tmp_path, f"study: res\nresources: {{cpus: 2, gpus: 0.25}}\n{tiny_train}"))
    assert (spec.resources.cpus, spec.resources.gpus) == (2.0, 0.25)


def _raylets():
    import psutil

    return sum(1 for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet")


@pytest.mark.long
def test_sigterm_cancels_the_tasks_in_flight_and_stops_the_local_instance(ray_instance, tmp_path, tiny_train):
    """``run --ray local`` in its own process: SIGTERM ends every trial in flight INTERRUPTED and its
    run KILLED, exits 143 and stops the Ray instance it started (the session's stays)."""
    train = tiny_train.replace("epochs: 3", "epochs: 40").replace("batch_size: 16", "batch_size: 2")
    head = "budget: {n_trials: 4}\nresources: {cpus: 1}\n"
    sweep = write_sweep(tmp_path, f"study: term\n{head}{train}space:\n  optim.lr: {{low: 1.0e-3, high: 3.0e-3}}\n")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    command = [sys.executable, "-m", "studyrunner", "run", str(sweep), "--ray", "local", "--storage", storage]
    command += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    before = _raylets()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_epoch(storage, "term", 1, lambda: proc.poll() is not None)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    assert "terminated (SIGTERM)" in out
    study = optuna.load_study(study_name="term", storage=storage)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    stopped = [t for t in study.trials if trial_state(t) == TrialState.INTERRUPTED]
    assert stopped and all(TrialRecord.of(t.user_attrs).fail_reason == "terminated (SIGTERM)" for t in stopped)
    client, parents, trials = _runs(tmp_path, "term")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert not [r for r in trials if r.info.status == "RUNNING"]
    by_id = {r.info.run_id: r for r in trials}
    for t in stopped:
        run = by_id.get(TrialRecord.of(t.user_attrs).mlflow_run_id)
        assert run is None or (run.info.status == "KILLED" and run.data.tags["state"] == "INTERRUPTED")
    assert any(TrialRecord.of(t.user_attrs).mlflow_run_id for t in stopped)
    deadline = time.monotonic() + 30
    while _raylets() > before and time.monotonic() < deadline:  # its instance's processes end with it
        time.sleep(0.5)
    assert _raylets() == before


def test_a_trial_no_node_can_hold_is_refused_locally_and_waited_for_on_a_cluster(ray_instance, tmp_path, tiny_train):
    from studyrunner.search.raytrials import connect_cluster

    spec = sweep_spec(tmp_path, tiny_train, head="resources: {gpus: 2}\n", name="big")
    refused = r"no node of --ray local can hold a trial of 1 CPUs and 2 GPUs now \(4 CPUs/1 GPUs\)"
    with pytest.raises(StudyrunnerError, match=refused):
        connect_cluster(spec, "local", None, None, None)
    cluster = connect_cluster(spec, "auto", None, None, None)  # an autoscaler may add a node with two GPUs
    assert "the trials wait until the cluster adds one" in cluster.notice
    assert ray.is_initialized()  # the session's instance: joined, never stopped by the library
    cluster.close()
    assert ray.is_initialized()


@pytest.mark.long
def test_a_pbt_population_runs_as_ray_tasks_each_segment_once(ray_instance, tmp_path, tiny_train, monkeypatch):
    """PBT on the Ray executor: members side by side as tasks, each (member, segment) once, the
    copied segments starting from their parents' state."""
    from studyrunner.search.pbt import segment_of

    monkeypatch.chdir(tmp_path)
    train = tiny_train.replace("epochs: 3", "epochs: 4").replace("name: adam, lr: 0.003", "name: sgd, lr: 0.003")
    head = "sampler: {name: pbt, population: 4, interval: 2, seed: 0}\npruner: {name: none}\nresources: {cpus: 1}\n"
    space = "space:\n  optim.lr: {low: 1.0e-5, high: 5.0e-2, log: true}\n  optim.momentum: {low: 0.0, high: 0.95}\n"
    spec = sweep_spec(tmp_path, train, head=head, space=space, name="rpbt")
    out = run_study(spec, _opts(tmp_path, ray="local"))
    assert out.counts == {TrialState.COMPLETE: 8}
    segments = sorted((segment_of(t)["member"], segment_of(t)["generation"]) for t in out.study.trials)
    assert segments == [(m, g) for m in range(4) for g in range(2)]
    for t in out.study.trials:
        rec = segment_of(t)
        assert (rec["event"] == "start") == (rec["generation"] == 0)
        assert TrialRecord.of(t.user_attrs).epochs == 2  # its own interval only
    _, _, trials = _runs(tmp_path, "rpbt")
    assert {r.data.tags["pbt.generation"] for r in trials} == {"0", "1"} and all(r.info.status == "FINISHED" for r in trials)

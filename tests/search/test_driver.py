import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from studyrunner.report.results import study_result, trial_history
from studyrunner.search.driver import RunOptions, run_study
from studyrunner.search.spec import load_sweep
from studyrunner.states import finished_count
from tests.conftest import sweep_spec, write_sweep


def _opts(tmp_path, **kw):
    return RunOptions(storage=f"sqlite:///{tmp_path / 'optuna.db'}", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", **kw)


def test_study_resumes_to_n_trials_and_mlflow_nests_every_trial(tmp_path, tiny_train):
    spec = sweep_spec(tmp_path, tiny_train, head="budget: {n_trials: 2}\n")
    first = run_study(spec, _opts(tmp_path))
    assert finished_count(first.study.trials) == 2
    again = run_study(spec, _opts(tmp_path, n_trials=3))
    assert finished_count(again.study.trials) == 3 and len(again.study.trials) == 3
    params = [tuple(sorted(t.params.items())) for t in again.study.trials]
    assert len(set(params)) == 3  # resuming continues the sampler, it does not replay trial 0

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("s")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("studyrunner.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_complete"] == 3
    assert "best.optim.lr" in parent.data.tags
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED" and child.data.tags["state"] == "COMPLETE"
        assert child.data.params["optim.name"] == "adam" and "augment.flip" in child.data.params
        assert child.data.tags["git_commit"] and child.data.tags["sampler"] == "tpe"
        assert "cores" in child.data.tags["env.machine"] and child.data.tags["env.torch"]  # the machine behind the figures
        history = client.get_metric_history(child.info.run_id, "val_acc")
        assert [m.step for m in history] == [1, 2, 3]
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "learning_curves.png", "confusion_matrix.json"} <= artifacts


def test_curves_stay_out_of_optunas_trial_table_and_reports_still_find_them(tmp_path, tiny_train):
    spec = sweep_spec(tmp_path, tiny_train, head="budget: {n_trials: 2}\n")
    study = run_study(spec, _opts(tmp_path)).study
    for t in study.trials:  # what optuna-dashboard and `optuna trials` print per trial: short scalars only
        assert not {"history", "val_confusion", "classes"} & set(t.user_attrs)
        assert len(json.dumps(t.user_attrs)) < 700, t.user_attrs
        assert [r["epoch"] for r in trial_history(t)] == [1, 2, 3]
    local = study_result(study)
    assert [len(t.history) for t in local.trials] == [3, 3]
    for t in study.trials:  # trials that ran on another machine: their curves come from MLflow
        (Path(t.user_attrs["out_dir"]) / "history.json").unlink()
    remote = study_result(optuna.load_study(study_name="s", storage=_opts(tmp_path).storage))
    for a, b in zip(local.trials, remote.trials, strict=True):
        assert [r["val_acc"] for r in b.history] == pytest.approx([r["val_acc"] for r in a.history])
        assert [r["train_loss"] for r in b.history] == pytest.approx([r["train_loss"] for r in a.history])


def test_each_trial_run_carries_system_metrics_and_the_parent_the_machine(tmp_path, tiny_train, monkeypatch):
    monkeypatch.setenv("STUDYRUNNER_SYSTEM_METRICS_S", "0.2")
    spec = sweep_spec(tmp_path, tiny_train, head="budget: {n_trials: 1}\n", name="sys")
    run_study(spec, _opts(tmp_path))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sys").experiment_id])
    trial = next(r for r in runs if r.data.tags.get("mlflow.parentRunId"))
    parent = next(r for r in runs if not r.data.tags.get("mlflow.parentRunId"))
    cpu = client.get_metric_history(trial.info.run_id, "system/cpu_utilization_percentage")
    memory = client.get_metric_history(trial.info.run_id, "system/system_memory_usage_megabytes")
    assert cpu and memory and all(0 <= m.value <= 100 for m in cpu) and memory[0].value > 0
    assert {"env.python", "env.torch", "env.machine"} <= set(parent.data.tags)  # the machine behind the figures
    assert "cores" in parent.data.tags["env.machine"]


def test_diverged_trial_is_pruned_with_reason_and_its_run_failed(tmp_path, tiny_train):
    space = "space:\n  optim.lr: {choices: [1.0e+6]}\n  optim.name: {choices: [sgd]}\n"
    spec = sweep_spec(tmp_path, tiny_train, head="budget: {n_trials: 1}\n", space=space, name="div")
    out = run_study(spec, _opts(tmp_path))
    t = out.study.trials[0]
    assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["outcome"] == "diverged"
    assert "train loss" in t.user_attrs["reason"] and out.counts["DIVERGED"] == 1
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("div").experiment_id], "tags.`studyrunner.role` = 'trial'")[0]
    assert run.info.status == "FAILED" and run.data.tags["state"] == "DIVERGED" and "reason" in run.data.tags


def test_pruner_prunes_and_mlflow_shows_which(tmp_path, tiny_train):
    head = "budget: {n_trials: 4}\npruner: {name: threshold, lower: 0.99}\n"
    spec = sweep_spec(tmp_path, tiny_train.replace("epochs: 3", "epochs: 4"), head=head, name="pr")
    out = run_study(spec, _opts(tmp_path))
    pruned = [t for t in out.study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "a 0.99 threshold on epoch-1 val acc must prune something"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pr").experiment_id], "tags.state = 'PRUNED'")
    assert {r.data.tags["trial_number"] for r in runs} == {str(t.number) for t in pruned}
    assert all(r.info.status == "KILLED" for r in runs)


def test_failing_trial_is_retried_then_recorded_fail(tmp_path, tiny_train, monkeypatch):
    import studyrunner.search.objective as objective_mod

    calls = []

    def broken_fit(*a, **k):
        calls.append(1)
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(objective_mod, "fit", broken_fit)
    spec = sweep_spec(tmp_path, tiny_train, head="budget: {n_trials: 1}\nmax_retries: 1\n", name="f")
    out = run_study(spec, _opts(tmp_path))
    fails = [t for t in out.study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(fails) >= 2 and fails[1].params == fails[0].params and fails[1].user_attrs["retry"] == 1
    assert "out of memory" in fails[0].user_attrs["fail_reason"] and "failed" in out.stopped
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("f").experiment_id], "tags.`studyrunner.role` = 'trial'")
    assert runs and all(r.info.status == "FAILED" for r in runs)
    assert len(calls) == len(fails)  # every try really ran, none was skipped


def test_an_invalid_sampled_configuration_fails_that_trial_with_its_reason_and_is_not_retried(tmp_path, tiny_train):
    """Each value is valid alone (the sweep loads), one combination is not: that trial fails with the
    reason, is not retried, and the study goes on."""
    space = "space:\n  optim.lr: {choices: [1.0e-4, 3.0e-3]}\n  sched.min_lr: {choices: [0.0, 1.0e-3]}\n"
    head = "budget: {n_trials: 4}\nmax_retries: 2\nsampler: {name: grid}\n"
    spec = sweep_spec(tmp_path, tiny_train + "  sched: {name: cosine}\n", head=head, space=space, name="inv")
    out = run_study(spec, RunOptions(storage=f"sqlite:///{tmp_path / 'optuna.db'}", tracking_uri="none"))
    fail, done = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE
    (bad,) = [t for t in out.study.trials if t.state == fail]  # once: never re-queued
    assert (bad.params["optim.lr"], bad.params["sched.min_lr"]) == (1e-4, 1e-3) and "retry" not in bad.user_attrs
    assert not any("retry" in t.user_attrs for t in out.study.trials)
    assert [t.state for t in out.study.trials].count(done) == 4 and out.stopped == ""  # the study went on to n_trials
    assert (
        "invalid configuration" in bad.user_attrs["fail_reason"]
        and "sched.min_lr must not exceed" in bad.user_attrs["fail_reason"]
    )


def test_resuming_with_another_fixed_config_is_refused(tmp_path, tiny_train):
    spec = sweep_spec(tmp_path, tiny_train, head="budget: {n_trials: 1}\n", name="cfg")
    run_study(spec, _opts(tmp_path, overrides={"epochs": 1}))
    with pytest.raises(Exception, match=r"another fixed configuration \(epochs: 1 -> 2\)"):
        run_study(spec, _opts(tmp_path, n_trials=2, overrides={"epochs": 2}))
    again = run_study(spec, _opts(tmp_path, n_trials=2, overrides={"epochs": 1, "threads": 1}))
    assert finished_count(again.study.trials) == 2
    # a study begun before a key existed held that key's default: it resumes
    stored = dict(again.study.user_attrs["base_config"])
    stored["optim"] = {k: v for k, v in stored["optim"].items() if k != "backbone_lr_mult"}
    again.study.set_user_attr("base_config", stored)
    assert finished_count(run_study(spec, _opts(tmp_path, n_trials=3, overrides={"epochs": 1})).study.trials) == 3
    with pytest.raises(Exception, match=r"optim.backbone_lr_mult: 1.0 -> 0.5"):
        run_study(spec, _opts(tmp_path, n_trials=4, overrides={"epochs": 1, "optim.backbone_lr_mult": 0.5}))


def test_any_class_name_is_tracked(tmp_path):
    """Folder names MLflow would refuse in a metric key still give per-class metrics (sanitised
    keys), the exact names as tag and artifact, and a FINISHED run."""
    import json
    from pathlib import Path

    from tests.conftest import make_folder

    root = make_folder(tmp_path / "own", classes=2, per_class=8, split="train")
    make_folder(root, classes=2, per_class=4, split="val")
    for split in ("train", "val"):
        (root / split / "c0").rename(root / split / "cat+dog (mixed)")
        (root / split / "c1").rename(root / split / "cat+dog [mixed]")  # cleans to the same key as c0
    train = (
        f"train:\n  data: {{dataset: folder, path: '{root}', image_size: 20, cache_dir: '{tmp_path / 'cache'}'}}\n"
        "  epochs: 2\n  batch_size: 16\n  precision: fp32\n  optim: {name: adam, lr: 0.003}\n"
    )
    spec = load_sweep(write_sweep(tmp_path, f"study: odd\nbudget: {{n_trials: 1}}\n{train}space:\n  seed: {{choices: [0]}}\n"))
    outcome = run_study(spec, _opts(tmp_path))
    assert finished_count(outcome.study.trials) == 1 and outcome.study.trials[0].state == optuna.trial.TrialState.COMPLETE
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = [
        r
        for r in client.search_runs([client.get_experiment_by_name("odd").experiment_id])
        if r.data.tags.get("mlflow.parentRunId")
    ]
    assert run.info.status == "FINISHED" and run.data.tags["classes"] == "cat+dog (mixed), cat+dog [mixed]"
    assert {"val_acc_cat_dog _mixed_", "val_acc_cat_dog _mixed__2"} <= set(run.data.metrics)  # both kept
    path = client.download_artifacts(run.info.run_id, "classes.json", str(tmp_path))
    assert json.loads(Path(path).read_text()) == ["cat+dog (mixed)", "cat+dog [mixed]"]
    from studyrunner.track.runs import metric_key

    assert metric_key("val_acc_猫") == "val_acc_猫"  # letters of any script are kept


def test_resuming_with_an_edited_pruner_warns_once_before_trials_run(tmp_path, tiny_train, monkeypatch):
    from studyrunner.search.objective import StudyEvents

    class Heard(StudyEvents):
        def __init__(self) -> None:
            self.notices: list[str] = []

        def notice(self, text: str) -> None:
            self.notices.append(text)

    monkeypatch.chdir(tmp_path)
    short = tiny_train.replace("epochs: 3", "epochs: 1")
    first, again, edited = Heard(), Heard(), Heard()
    run_study(sweep_spec(tmp_path, short, head="budget: {n_trials: 1}\n"), _opts(tmp_path), first)
    run_study(sweep_spec(tmp_path, short, head="budget: {n_trials: 2}\n"), _opts(tmp_path), again)
    head = "budget: {n_trials: 3}\npruner: {name: median, warmup_epochs: 1}\n"
    run_study(sweep_spec(tmp_path, short, head=head), _opts(tmp_path), edited)
    changes = [[n for n in heard.notices if "than it began with" in n] for heard in (first, again, edited)]
    assert changes[0] == [] and changes[1] == []  # a bigger budget is not a change of the search
    assert len(changes[2]) == 1 and "another pruner than it began with" in changes[2][0]


def test_an_epoch_budget_starts_no_trial_that_would_exceed_it(tmp_path, tiny_train):
    from studyrunner.search.best import epochs_spent
    from studyrunner.states import StopReason

    spec = sweep_spec(tmp_path, tiny_train, head="budget: {n_trials: 10, epochs: 8}\npruner: {name: none}\n")
    outcome = run_study(spec, _opts(tmp_path))
    assert outcome.stop.kind == StopReason.BUDGET and "budget.epochs 8" in outcome.stop.text
    assert len(outcome.study.trials) == 2 and epochs_spent(outcome.study.trials, 3, 1) == 6  # a third 3-epoch trial: 9 > 8


def test_epochs_spent_counts_a_resumed_retry_once_and_a_failed_attempt_too():
    from studyrunner.search.best import epochs_spent

    def trial(state, **attrs):
        return optuna.trial.create_trial(state=state, value=0.5 if state.name == "COMPLETE" else None, user_attrs=attrs)

    S = optuna.trial.TrialState
    trials = [
        trial(S.FAIL, epochs=23, outcome="interrupted"),  # killed after 23 epochs ...
        trial(S.COMPLETE, epochs=30, resumed_from_epoch=23),  # ... its retry trained the other 7
        trial(S.PRUNED, epochs=4),
        trial(S.COMPLETE, epochs=3, pbt={"member": 0, "generation": 2, "start": 6, "end": 9}, resumed_from_epoch=8),
    ]
    assert epochs_spent(trials, 30, 1) == 23 + 7 + 4 + 1
    assert epochs_spent([*trials, trial(S.RUNNING)], 30, 2) == 2 * 35 + 30  # each seed counts; a running one in full

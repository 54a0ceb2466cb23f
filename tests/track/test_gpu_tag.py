"""A worker pinned with --gpus (CUDA_VISIBLE_DEVICES) tags each trial run with its GPU; a tag the
objective sets itself wins."""

from mlflow.tracking import MlflowClient

from studyrunner.config import TrainConfig
from studyrunner.track.runs import Tracker


def test_trial_runs_carry_the_workers_gpu(tmp_path, monkeypatch):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "gpus")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    pinned = tracker.start_trial(0, TrainConfig(), {}, {})
    chosen = tracker.start_trial(1, TrainConfig(), {}, {"cuda_visible_devices": "3"})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    unpinned = tracker.start_trial(2, TrainConfig(), {}, {})
    client = MlflowClient(tracker.uri)
    tags = [client.get_run(r).data.tags for r in (pinned, chosen, unpinned)]
    assert tags[0]["cuda_visible_devices"] == "1" and tags[1]["cuda_visible_devices"] == "3"
    assert "cuda_visible_devices" not in tags[2]
    tracker.close()

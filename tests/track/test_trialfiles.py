"""Where a trial's files live: the outbox's order, retries and coalescing, uploads to a real MLflow
artifact store, and the fetch that a retry on another machine does before it resumes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from studyrunner.config import TrainConfig
from studyrunner.track.runs import Tracker
from studyrunner.track.trialfiles import Outbox, fetch_checkpoint


def test_outbox_retries_a_failing_call_until_it_goes_through():
    calls: list[float] = []

    def flaky() -> None:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("server restarting")

    box = Outbox(retry_s=10)
    box.put("r", flaky)
    assert box.flush("r") == "" and len(calls) == 3


def test_outbox_reports_what_never_arrived_and_skips_the_rest_of_that_run():
    done: list[str] = []

    def down() -> None:
        raise ConnectionError("connection refused")

    box = Outbox(retry_s=0.6)
    box.put("r", down)
    box.put("r", lambda: done.append("r"))
    box.put("other", lambda: done.append("other"))
    error = box.flush("r")
    assert "ConnectionError: connection refused" in error
    assert done == ["other"]  # the broken run's later calls are dropped; its trial is retried as a whole
    assert box.flush("r") == ""  # the error was reported once


def test_outbox_keeps_order_and_uploads_a_file_waiting_twice_once():
    gate, seen = threading.Event(), []
    box = Outbox(retry_s=1)
    box.put("r", gate.wait)  # the thread is busy: the next calls wait in the queue
    box.put("r", lambda: seen.append("epoch 1"))
    box.put("r", lambda: seen.append("state"), key="state-seed0.pt")
    box.put("r", lambda: seen.append("state again"), key="state-seed0.pt")  # still waiting: the first reads the newest
    box.put("r", lambda: seen.append("epoch 2"))
    gate.set()
    assert box.flush("r") == ""
    assert seen == ["epoch 1", "state", "epoch 2"]


def _tracker(tmp_path, study="files"):
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", study)


def _run(tracker: Tracker, origin: int) -> str:
    return tracker.start_trial(origin, TrainConfig(), {}, {"origin": str(origin)})


def test_uploaded_state_is_fetched_into_an_empty_folder_from_the_newest_attempt(tmp_path):
    tracker = _tracker(tmp_path)
    first, second = tmp_path / "a" / "trial-0", tmp_path / "b" / "trial-0"
    for folder, tag in ((first, b"first"), (second, b"second")):
        folder.mkdir(parents=True)
        (folder / "state-seed0.pt").write_bytes(b"state of the " + tag)
        (folder / "best.pt").write_bytes(b"best of the " + tag)
    old = _run(tracker, 0)
    tracker.upload(old, first)
    assert tracker.flush(old) == ""
    time.sleep(0.01)  # start times order the attempts
    new = _run(tracker, 0)
    tracker.upload(new, second)
    assert tracker.flush(new) == ""
    other = _run(tracker, 5)  # another trial's run is never a source
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "state-seed0.pt").write_bytes(b"of trial 5")
    tracker.upload(other, tmp_path / "c")
    assert tracker.flush(other) == ""

    here = tmp_path / "elsewhere" / "trial-0"
    source, count = tracker.fetch_state(0, here)
    assert source == new and count == 2
    assert (here / "state-seed0.pt").read_bytes() == b"state of the second"
    assert (here / "best.pt").read_bytes() == b"best of the second"
    assert tracker.fetch_state(0, here) == ("", 0)  # a folder with its own state keeps it
    assert tracker.fetch_state(7, tmp_path / "none") == ("", 0)  # no attempt uploaded any


def test_an_unchanged_file_is_not_uploaded_again_and_a_checkpoint_is_fetched_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = _tracker(tmp_path)
    folder = tmp_path / "trial-1"
    folder.mkdir()
    (folder / "best.pt").write_bytes(b"weights")
    run = _run(tracker, 1)
    tracker.upload(run, folder)
    tracker.upload(run, folder)  # nothing changed: nothing queued
    assert tracker.flush(run) == ""
    assert len(tracker._sent) == 1
    path = fetch_checkpoint(tracker.uri, run)
    assert path and Path(path).read_bytes() == b"weights"
    assert fetch_checkpoint(tracker.uri, run) == path  # already here
    assert fetch_checkpoint(tracker.uri, run, "last.pt") == ""  # never uploaded

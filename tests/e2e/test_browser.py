"""The first hour in a real browser: ``studyrunner ui --dashboard`` on a tracked study, then the
MLflow UI and optuna-dashboard driven by Playwright over Debian's headless Chromium (the
``chromium`` package, which .ci/run installs). Every page is saved as a screenshot under
$STUDYRUNNER_TEST_ARTIFACTS (default runs/test-artifacts/browser) for a person to look at."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from studyrunner.search.driver import RunOptions, run_study
from tests.conftest import make_folder, sweep_spec

pytestmark = [pytest.mark.long, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("STUDYRUNNER_TEST_ARTIFACTS", Path(__file__).parents[2] / "runs" / "test-artifacts")) / "browser"
TIMEOUT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A three-trial study over a 4-class folder, tracked in MLflow, 4 epochs a trial."""
    tmp = tmp_path_factory.mktemp("browser")
    root = make_folder(tmp / "own", classes=4, per_class=32, split="train")
    make_folder(root, classes=4, per_class=4, split="val")
    make_folder(root, classes=4, per_class=4, split="test")
    train = (
        f"train:\n  data: {{dataset: folder, path: '{root}', image_size: 20, cache_dir: '{tmp / 'cache'}'}}\n"
        "  epochs: 4\n  batch_size: 16\n  precision: fp32\n  optim: {name: adam, lr: 0.003}\n"
    )
    spec = sweep_spec(tmp, train, head="budget: {n_trials: 3}\n", name="browse")
    stores = {"storage": f"sqlite:///{tmp / 'optuna.db'}", "tracking": f"sqlite:///{tmp / 'mlflow.db'}"}
    outcome = run_study(spec, RunOptions(storage=stores["storage"], tracking_uri=stores["tracking"]))
    assert len(outcome.study.trials) == 3
    return stores


@pytest.fixture(scope="module")
def links(tracked: dict[str, str]) -> Iterator[dict[str, str]]:
    """``studyrunner ui --dashboard`` as a user starts it; its lines name what to open."""
    if CHROMIUM is None and os.environ.get("CI"):
        pytest.fail("CI must run the browser tests: .ci/run installs Debian's chromium package")
    if CHROMIUM is None:
        pytest.skip("Debian's chromium package is not installed (apt-get install chromium); .ci/run installs it")
    ports = [str(_free_port()), str(_free_port())]
    command = [sys.executable, "-m", "studyrunner", "ui", "--dashboard", "--port", ports[0], "--dashboard-port", ports[1]]
    command += ["--storage", tracked["storage"], "--tracking-uri", tracked["tracking"]]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = []
    while not lines or not lines[-1].startswith("Ctrl-C"):
        line = proc.stdout.readline()
        assert line, f"studyrunner ui stopped (exit {proc.poll()}) after printing {lines}"
        lines.append(line.strip())
    try:
        yield {line.split()[0]: line.split()[-2] if "optuna" in line else line.split()[2] for line in lines[:-1]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0  # Ctrl-C/SIGTERM stops both servers cleanly


@pytest.fixture(scope="module")
def page(links: dict[str, str]) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1600, "height": 1000})
        tab.set_default_timeout(TIMEOUT_MS)
        yield tab
        browser.close()


def test_ui_prints_one_line_per_server_bound_to_loopback(links):
    assert set(links) == {"MLflow", "optuna-dashboard"}
    assert all(link.startswith("http://127.0.0.1:") for link in links.values())


def test_the_study_opens_on_training_runs_with_trials_nested_under_its_run(page, links):
    page.goto(links["MLflow"])
    page.get_by_role("heading", name="Runs").wait_for()
    page.screenshot(path=ARTIFACTS / "1-experiment.png")
    assert "/runs" in page.url and "workflowType=genai" not in page.url
    assert "Token Usage" not in page.inner_text("body")  # not the GenAI overview
    rows = page.locator(".ag-pinned-left-cols-container .ag-row")
    assert rows.all_inner_texts() and all("trial-" not in t for t in rows.all_inner_texts())  # collapsed: the study's run
    rows.first.locator("[col-id*='Run Name'] button").first.click()  # expand it
    page.get_by_text("trial-2", exact=True).wait_for()
    page.screenshot(path=ARTIFACTS / "2-trials-nested.png")
    names = [t.split("\n")[-2] if "\n" in t else t for t in rows.all_inner_texts()]
    assert sum("trial-" in n for n in names) == 3 and any("browse" in n for n in names), names


def _runs(tracking: str) -> tuple[str, list[str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("browse")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''", order_by=["attributes.start_time ASC"])
    return str(exp.experiment_id), [r.info.run_id for r in runs]


def test_val_acc_is_a_per_epoch_chart_of_a_trial(page, links, tracked):
    exp, runs = _runs(tracked["tracking"])
    base = links["MLflow"].split("/#/")[0]
    page.goto(f"{base}/#/experiments/{exp}/runs/{runs[0]}/model-metrics?workflowType=machine_learning")
    page.get_by_placeholder("Search metric charts").fill("val_acc")
    cards = page.locator("[data-testid=experiment-view-compare-runs-card]")
    card = cards.filter(has=page.get_by_text("val_acc", exact=True)).first
    card.get_by_text("Step", exact=True).wait_for()  # a line over steps (epochs), not a single-value bar
    page.screenshot(path=ARTIFACTS / "3-val-acc-per-epoch.png")
    ticks = card.inner_text().split("\n")
    assert {"1", "2", "3", "4"} <= set(ticks), ticks  # the four epochs on the x axis


def test_the_compare_view_lists_sampled_parameters_not_paths(page, links, tracked):
    exp, runs = _runs(tracked["tracking"])
    base = links["MLflow"].split("/#/")[0]
    page.goto(f"{base}/#/compare-runs?runs={json.dumps(runs[:2])}&experiments={json.dumps([exp])}&workflowType=machine_learning")
    chosen = page.get_by_text("Parameters:", exact=True).locator("xpath=following-sibling::*[1]")
    chosen.get_by_text("optim.lr", exact=True).wait_for()
    page.screenshot(path=ARTIFACTS / "4-compare.png", full_page=True)
    assert chosen.inner_text().split() == ["model.batchnorm", "optim.lr"]  # the parallel-coordinates axes: what was sampled
    text = page.inner_text("body")
    params = text[text.index("\nParameters\n") : text.index("\nMetrics\n")]  # the compare table's parameter rows
    rows = [line.split("\t")[0] for line in params.split("\n")]
    assert "optim.lr" in rows and "model.batchnorm" in rows and "epochs" in rows
    assert not {"out_dir", "data.path", "data.cache_dir"} & set(rows), rows  # per-trial paths are tags, not parameters


def test_optuna_dashboard_names_the_metric(page, links):
    page.goto(links["optuna-dashboard"] + "studies/1")
    title = page.locator("text.ytitle").first
    title.wait_for()
    page.screenshot(path=ARTIFACTS / "5-optuna-dashboard.png")
    assert title.text_content() == "val_acc"
    assert "Objective 0" not in page.inner_text("body")

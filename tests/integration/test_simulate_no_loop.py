"""`digitloop simulate --no-loop`: the simulated users alone against a running service, as the
end-to-end test drives a cluster whose CronWorkflow runs the loop (tests/e2e/test_cluster.py).

Same command and code path as there, against `bentoml serve` on 127.0.0.1 with a local store:
the users draw, get answers and send feedback that lands in the store, and no loop runs
(no run outputs or reports in the store, no new model version)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from model.registry import Registry
from model.settings import ModelSettings
from tests.conftest import MNIST_PATH, REPO_ROOT, VENV_BIN
from tests.serving import Service, clean_env, register_models

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

WINDOW = 64


@pytest.fixture(scope="module")
def service(tmp_path_factory, mnist):
    root = tmp_path_factory.mktemp("simulate-no-loop")
    env = {"DIGITLOOP_DATA_DIR": str(root / "data"), "DIGITLOOP_WORKERS": "1"}
    register_models(mnist, env, count=1, n_train=2000, epochs=1)
    running = Service(env, root / "serve.log").start()
    try:
        yield running
    finally:
        running.stop()


def test_no_loop_plays_the_users_and_leaves_the_loop_alone(service: Service, tmp_path: Path):
    data_dir = Path(service.env["DIGITLOOP_DATA_DIR"])
    # The simulator shares the service's data directory: had it run the loop, the loop's run
    # outputs and reports would be in this store and a retrained version in this registry.
    summary = play(service, tmp_path / "out", "--label-prob", "0.5")

    # It drew both windows and got an answer for every drawing, from version 1.
    windows = summary["windows"]
    assert [w["phase"] for w in windows] == ["in-distribution", "drifted"]
    assert all(w["n"] == WINDOW for w in windows)
    assert all(w["stable_version"] == "1" and w["canary_version"] is None for w in windows)
    assert windows[0]["accuracy"] > 0.5, "in-distribution digits mostly answered right"

    # Its feedback landed in the store: one record per labelled answer, from the simulator.
    labelled = sum(w["labelled"] for w in windows)
    assert 0 < labelled < 2 * WINDOW
    records = [
        r
        for r in service.feedback_records().values()
        if r["source"] in ("simulator", "simulator-asked")
    ]
    assert len(records) == labelled
    assert all(w["estimated_accuracy"] is not None for w in windows)

    # And no loop ran here: it says so, saw no loop events, left no run outputs or reports in
    # the store, trained nothing and scored no champion.
    assert summary["loop"] is False and summary["drift_detected"] is None
    assert all(w["events"] == [] and w["drift_score"] is None for w in windows)
    assert summary["mnist_accuracy_final"] is None
    assert not (service.store_dir / "runs").exists()
    assert not (service.store_dir / "reports").exists()
    registry = Registry(ModelSettings(data_dir=data_dir, mlflow_tracking_uri=None))
    assert [v.version for v in registry.versions()] == ["1"]


def play(service: Service, out: Path, *options: str) -> dict:
    """``digitloop simulate --no-loop`` against ``service``, one window each side."""
    env = clean_env(
        DIGITLOOP_DATA_DIR=service.env["DIGITLOOP_DATA_DIR"], DIGITLOOP_MNIST_PATH=str(MNIST_PATH)
    )
    command = [str(VENV_BIN / "digitloop"), "simulate", "--url", service.url, "--no-loop"]
    command += ["--windows-before", "1", "--windows-after", "1", "--window-size", str(WINDOW)]
    result = subprocess.run(
        [*command, *options, "--out", str(out), "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_users_who_only_correct_never_confirm(service: Service, tmp_path: Path):
    before = set(service.feedback_records())
    summary = play(
        service, tmp_path, "--feedback", "correct-only", "--label-prob", "1", "--ask-below", "0"
    )
    new = [r for pid, r in service.feedback_records().items() if pid not in before]
    wrong = sum(w["n"] - round(w["accuracy"] * w["n"]) for w in summary["windows"])
    assert len(new) == summary["labels"] == wrong > 0  # every wrong answer, nothing else
    # a prediction id carries the label the service answered: every record corrects it
    assert all(int(r["prediction_id"].split(".")[3]) != r["label"] for r in new)


def test_users_answer_when_the_sketchpad_asks(service: Service, tmp_path: Path):
    before = set(service.feedback_records())
    summary = play(
        service,
        tmp_path,
        "--label-prob",
        "0",
        "--ask-below",
        "1",
        "--answer-when-asked",
        "1",
    )
    new = [r for pid, r in service.feedback_records().items() if pid not in before]
    asked = sum(w["asked"] for w in summary["windows"])
    # unsure of every answer short of certainty: each asked one answered, none unasked
    assert len(new) == summary["labels"] == asked > 0
    assert {r["source"] for r in new} == {"simulator-asked"}


def test_no_loop_needs_the_url_of_a_stack_whose_loop_runs_elsewhere(tmp_path: Path):
    result = subprocess.run(
        [str(VENV_BIN / "digitloop"), "simulate", "--no-loop"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "--url" in result.stderr


def test_what_served_a_window_behind_a_gateway():
    from collections import Counter

    from digitloop_bench.simulator.population import window_serving

    from services.client import ModelInfo

    answers = Counter({("stable", "1"): 140, ("canary", "2"): 60, ("canary", "1"): 1})
    # Behind a gateway, /model speaks for the one pod that answered it: the answers tell.
    canary_pod = ModelInfo(tracks={"canary": {"model_version": "2"}}, only_track="canary")
    assert window_serving(canary_pod, answers) == ("1", "2", 30)
    stable_pod = ModelInfo(tracks={"stable": {"model_version": "1"}}, only_track="stable")
    assert window_serving(stable_pod, Counter({("stable", "1"): 64})) == ("1", None, 0)
    # One service holding both tracks (the embedded stack) says it in /model.
    both = ModelInfo(
        tracks={"stable": {"model_version": "1"}, "canary": {"model_version": "2"}},
        canary_weight=20,
    )
    assert window_serving(both, answers) == ("1", "2", 20)

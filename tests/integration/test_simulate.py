"""The whole loop on one machine: the embedded stack and the simulator, short configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from digitloop_bench.simulator.population import SimConfig
from digitloop_bench.simulator.run import run_simulation
from rich.console import Console

from digitloop.stack import EmbeddedStack, StackConfig
from tests.conftest import MNIST_PATH, free_port
from tests.serving import register_models

# Retraining twice on 2 cores: more than the suite's 10-minute default per test when busy.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

# Small numbers so a run takes minutes: a canary at 50 % of traffic, retrained on 2 epochs
# of 10,000 MNIST digits plus the feedback.
LOOP_ENV = {
    "DIGITLOOP_MNIST_PATH": str(MNIST_PATH),
    "DIGITLOOP_FLUSH_INTERVAL_S": "1",
    "DIGITLOOP_MIN_NEW_LABELS": "50",
    "DIGITLOOP_CANARY_MIN_ANSWERS": "100",
    "DIGITLOOP_NEW_CANARY_WEIGHT": "50",
    "DIGITLOOP_RETRAIN_EPOCHS": "2",
    "DIGITLOOP_RETRAIN_MNIST_LIMIT": "10000",
    "DIGITLOOP_DRIFT_REFERENCE_SIZE": "1000",
    "DIGITLOOP_DRIFT_WINDOW": "300",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, mnist):
    import os

    data_dir = tmp_path_factory.mktemp("sim") / "data"
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("DIGITLOOP_")]:
        del os.environ[key]
    os.environ.update(LOOP_ENV)
    register_models(mnist, {"DIGITLOOP_DATA_DIR": str(data_dir)}, count=1, n_train=8000, epochs=2)
    config = StackConfig(
        data_dir=data_dir, with_ui=False, workers=1, mlflow_port=free_port(), serve_port=free_port()
    )
    try:
        with EmbeddedStack(config, console=Console(stderr=True)) as running:
            yield running
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_drift_is_found_and_a_canary_promoted_with_one_answer_in_five_labelled(
    stack, tmp_path: Path
):
    config = SimConfig(
        windows_before=1, windows_after=3, window_size=300, label_prob=0.2, settle_s=2.0
    )
    summary = run_simulation(stack.service_url, config, tmp_path, Console(stderr=True))
    assert summary.drift_detected
    assert summary.promoted_version is not None
    assert summary.accuracy_drifted_after > summary.accuracy_drifted_before + 0.03
    # Promoted by the loop's second run after drift onset at the latest (drift, retrain and
    # canary in the first), on the labels of those windows alone.
    assert summary.cycles_until_promotion is not None and summary.cycles_until_promotion <= 2
    drifted = [w for w in summary.windows if w["phase"] == "drifted"]
    spent = sum(w["labelled"] for w in drifted[: summary.cycles_until_promotion])
    assert summary.labels_until_promotion == spent < 300
    assert all(w["estimated_accuracy"] is not None for w in summary.windows)
    assert Path(summary.plot).stat().st_size > 10_000
    assert (tmp_path / "summary.json").exists()


def test_a_bad_challenger_is_rolled_back(stack, tmp_path: Path):
    config = SimConfig(
        windows_before=1,
        windows_after=2,
        window_size=300,
        label_prob=0.2,
        settle_s=2.0,
        scenario="bad-model",
    )
    summary = run_simulation(stack.service_url, config, tmp_path, Console(stderr=True))
    assert len(summary.rolled_back) == 1
    # on its own few labelled answers, not the 100+ a two-sample test would wait for
    assert summary.canary_labels_until_rollback is not None
    assert summary.canary_labels_until_rollback < 100
    events = [e for w in summary.windows for e in w["events"]]
    assert any(e.startswith("bad challenger") for e in events)

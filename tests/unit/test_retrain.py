"""Retraining's pure parts and its registry look-ups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from model.evaluate import evaluate
from model.registry import Registry, TrainingRecord
from model.train import TrainConfig, train
from pipelines.steps.retrain import feedback_cutoff, find_retrained, split_holdout
from tests.conftest import tiny_split


def labelled(n: int) -> pd.DataFrame:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return pd.DataFrame(
        {
            "image": [np.full(784, i, np.uint8) for i in range(n)],
            "true_label": [i % 10 for i in range(n)],
            "feedback_ts": [pd.Timestamp(start + timedelta(minutes=i)) for i in range(n)][::-1],
        }
    )


def test_holdout_is_the_most_recent_feedback():
    split = split_holdout(labelled(10), 0.3)
    assert len(split.train_y) == 7 and len(split.holdout_y) == 3
    # Rows came newest first; the holdout is still the three newest (pixel values 0, 1, 2).
    assert sorted(int(x[0, 0]) for x in split.holdout_x) == [0, 1, 2]
    assert split.since < split.until
    empty = split_holdout(labelled(0), 0.3)
    assert len(empty.train_y) == 0 and empty.since is None


def test_a_retried_run_finds_its_version(data_dir, mnist):
    registry = Registry()
    x, y, x_test, y_test = tiny_split(mnist, 300, 100)
    config = TrainConfig(epochs=1, augment=False)
    result = train(x, y, config)
    until = datetime(2026, 2, 1, tzinfo=UTC)
    info = registry.log_and_register(
        result.net,
        TrainingRecord.of(
            config,
            result,
            evaluate(result.net, x_test, y_test),
            {"loop_run": "run-7", "feedback_until": until.isoformat()},
        ),
    )
    assert find_retrained(registry, "run-7").version == info.version
    assert find_retrained(registry, "run-8") is None
    assert feedback_cutoff(info) == until

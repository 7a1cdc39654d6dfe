"""The forward-pass bench (``python -m digitloop_bench.serving.forward``): what it compares
and how, on a tiny untrained network and a few synthetic digits. Times are never asserted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from digitloop_bench.serving import forward as bench
from typer.testing import CliRunner

from model.network import DigitNet


def _digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 2, n)


def test_compare_counts_against_the_baseline():
    labels = np.array([0, 1, 2, 3])
    one_hot = np.eye(10, dtype=np.float32)
    embeddings = np.zeros((4, 3), np.float32)
    moved = embeddings.copy()
    moved[1, 2] = 0.5
    moved[3, 0] = -2.0
    results, share = bench.compare(
        times={bench.BASELINE: [100.0, 100.0, 300.0], "fast": [70.0, 75.0, 10.0]},
        embeddings={bench.BASELINE: embeddings, "fast": moved},
        logits={bench.BASELINE: one_hot[[0, 1, 2, 9]], "fast": one_hot[[0, 5, 2, 3]]},
        labels=labels,
        flagged=lambda e: np.abs(e).max(axis=1) > 1.0,
    )
    base, fast = results[bench.BASELINE], results["fast"]
    assert share == 0.0
    assert (base.ratio, base.labels_differing, base.unusual_flipped) == (1.0, 0, 0)
    assert not base.pays
    assert base.accuracy == 0.75 and fast.accuracy == 0.75  # one right, one wrong: 2 differ
    assert fast.labels_differing == 2 and fast.accuracy_change_points == 0.0
    assert fast.ratio == pytest.approx(70 / 100)  # medians
    assert (fast.embedding_diff_max, fast.embedding_diff_median) == (2.0, 0.25)
    assert fast.unusual_flipped == 1 and fast.unusual_flipped_share == 0.25
    assert not fast.pays  # 25 % of the flags flipped


def test_every_variant_answers_every_digit_and_is_compared_with_the_served_one():
    torch.manual_seed(0)
    net = DigitNet().eval()
    x_fit, y_fit = _digits(60, 0)
    x_test, y_test = _digits(60, 1)
    result = bench.measure(
        net, x_test, y_test, x_fit, y_fit, calibration=x_fit[:20], block=7, warmup=2
    )
    assert list(result.variants) == list(bench.VARIANTS)
    assert result.calls_per_variant == result.n_test == 60
    base = result.variants[bench.BASELINE]
    assert base.ratio == 1.0 and base.labels_differing == 0 and base.unusual_flipped == 0
    assert base.embedding_diff_max == 0.0 and base.accuracy_change_points == 0.0
    for row in result.variants.values():
        assert row.us_per_image > 0 and 0 <= row.labels_differing <= 60
        # Each label that differs moves the count of right answers by at most one.
        assert abs(row.accuracy_change_points) * 60 / 100 <= row.labels_differing + 1e-9
        assert row.unusual_flipped_share == pytest.approx(row.unusual_flipped / 60, abs=1e-4)
    # The fp32 ways of running the same network agree with the export to float precision.
    for name in ("torch_eager", "torchscript", "channels_last"):
        assert result.variants[name].embedding_diff_max < 1e-3
    json.dumps(result.as_dict())
    assert bench.table(result).row_count == len(bench.VARIANTS)


def test_the_command_prints_one_json_object(tmp_path):
    torch.manual_seed(0)
    model_file = tmp_path / "net.pt"
    torch.save(DigitNet().state_dict(), model_file)
    x_train, y_train = _digits(130, 2)
    x_test, y_test = _digits(100, 3)
    mnist = tmp_path / "mnist.npz"
    np.savez(mnist, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    app = typer.Typer()
    app.command()(bench.main)
    args = ["--model-file", str(model_file), "--mnist", str(mnist), "--n-test", "100"]
    result = CliRunner().invoke(app, [*args, "--calibration", "30", "--block", "25", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["n_test"] == 100 and printed["baseline"] == bench.BASELINE
    assert set(printed["variants"]) == set(bench.VARIANTS)
    assert printed["variants"][bench.BASELINE]["ratio"] == 1.0

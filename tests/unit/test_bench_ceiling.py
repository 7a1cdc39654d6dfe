"""The ceiling bench (digitloop_bench.ceiling): its controls, its window count, one short run.

The controls are what its verdict rests on: each must keep the style's interpolation and
drop the style itself, or "the detector sees the interpolation" would not follow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from digitloop_bench.ceiling import fit_detector, resampling_control, window_hits
from digitloop_bench.serving.run import REPO_ROOT
from digitloop_bench.shifts import make_shift, on_the_canvas, service_view

from model.network import DigitNet
from model.novelty import critical_count, window_test
from pipelines.drift.features import stroke_width


def _tilt(images: np.ndarray) -> np.ndarray:
    """Each image's principal-axis angle in degrees, from its ink's second moments."""
    x = images.astype(np.float64)
    ys, xs = np.mgrid[0:28, 0:28]
    mass = x.sum(axis=(1, 2))
    cy, cx = (x * ys).sum(axis=(1, 2)) / mass, (x * xs).sum(axis=(1, 2)) / mass
    dy, dx = ys - cy[:, None, None], xs - cx[:, None, None]
    mu20, mu02 = (x * dx**2).sum(axis=(1, 2)), (x * dy**2).sum(axis=(1, 2))
    mu11 = (x * dx * dy).sum(axis=(1, 2))
    return np.degrees(0.5 * np.arctan2(2 * mu11, mu20 - mu02))


@pytest.fixture(scope="module")
def digits(mnist) -> tuple[np.ndarray, np.ndarray]:
    # Ones tilt the most clearly: their principal axis is well defined.
    ones = np.flatnonzero(mnist.y_test == 1)[:60]
    return mnist.x_test[ones], mnist.y_test[ones]


def test_the_rotation_control_interpolates_like_the_style_and_leaves_no_tilt(digits):
    logged, _ = service_view(*digits)
    control = resampling_control("rotated", *digits, seed=3)
    rotated, _ = make_shift("rotated", *digits, seed=3)
    turned = np.abs(_tilt(rotated) - _tilt(logged))
    kept = np.abs(_tilt(control) - _tilt(logged))
    assert np.median(turned) > 8 and np.median(kept) < 2, (np.median(turned), np.median(kept))
    # The interpolation is there: the control is not the digit itself.
    assert np.abs(control.astype(int) - logged).mean() > 2


def test_the_pen_control_redraws_at_4x_without_a_pen(digits):
    def width(images: np.ndarray) -> float:
        return float(np.median(stroke_width(images.astype(np.float32) / 255.0)))

    logged, _ = service_view(*digits)
    control = resampling_control("thick", *digits)
    assert resampling_control("wobbly", *digits).tobytes() == control.tobytes()
    thick, _ = make_shift("thick", *digits, seed=1)
    assert width(thick) > 1.4 * width(logged)
    assert width(control) == pytest.approx(width(logged), rel=0.1)


def test_shifted_on_the_canvas_is_logged_as_the_canvas_digit(digits):
    """Drawn at 55-80 % of the 280 px canvas, anywhere on it, a digit reaches the network
    as the same digit drawn across the canvas: preprocessing removes size and place."""
    control = resampling_control("shifted", *digits).astype(np.float64)
    canvas = on_the_canvas(*digits)[0].astype(np.float64)
    shifted, _ = make_shift("shifted", *digits, seed=2)
    logged, _ = service_view(*digits)

    def gap(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b.astype(np.float64)).mean())

    assert gap(control, canvas) < 0.5 * gap(shifted, logged), (
        gap(control, canvas),
        gap(shifted, logged),
    )


def test_on_the_canvas_logs_the_same_digits_with_a_slightly_wider_brush(mnist):
    digits, labels = mnist.x_test[:300], mnist.y_test[:300]
    drawn, kept = on_the_canvas(digits, labels)
    logged, _ = service_view(digits, labels)
    assert drawn.shape == logged.shape and (kept == labels).all()
    # The same digit: far closer to its own MNIST image than to the next digit's.
    own = np.abs(drawn.astype(int) - logged).mean(axis=(1, 2))
    other = np.abs(drawn.astype(int) - np.roll(logged, 1, axis=0)).mean(axis=(1, 2))
    assert (own < other).mean() > 0.95
    ratio = np.median(stroke_width(drawn / 255.0)) / np.median(stroke_width(logged / 255.0))
    assert 1.01 < ratio < 1.15, ratio


@pytest.mark.parametrize("style", ["typeset", "segments", "small_offcentre"])
def test_a_new_shape_has_no_resampling_control(style, digits):
    assert resampling_control(style, *digits) is None


@pytest.mark.parametrize("offset", [0, -1])
def test_window_hits_is_the_binomial_test_of_the_windows_flags(offset):
    """With clean drawings never flagged and shifted ones always, a window's count is its
    number of shifted drawings: every window is detected from the critical count on, and
    none below it."""
    n, share, alpha = 200, 0.05, 0.005
    k = critical_count(n, share, alpha) + offset
    assert window_test(k, n, share, alpha)[0] is (offset == 0)
    hits = window_hits(
        np.zeros(500, bool),
        np.ones(500, bool),
        share=share,
        alpha=alpha,
        window_size=n,
        mix=k / n,
        windows=20,
        rng=np.random.default_rng(0),
    )
    assert hits == (20 if offset == 0 else 0)


def test_the_told_detector_weighs_a_small_negative_source_like_the_positives():
    """A few canvas-like negatives off to one side must bend the detector away from them:
    unweighted, 50 of them among 2,000 hardly count, the threshold that spares them sits
    high, and the positives caught at it fall from about 0.6 to 0.4 (measured, 3 seeds)."""
    rng = np.random.default_rng(0)
    centres = {"many": np.zeros(2), "few": np.array([0, 2.5]), "positives": np.array([2.0, 2.0])}

    def draw(name: str, n: int) -> np.ndarray:
        return rng.normal(0, 1, size=(n, 2)) + centres[name]

    detector = fit_detector([draw("many", 2000), draw("few", 50)], draw("positives", 200))
    scores = {name: detector.decision_function(draw(name, 2000)) for name in centres}
    threshold = max(np.quantile(scores["many"], 0.95), np.quantile(scores["few"], 0.95))
    assert (scores["positives"] > threshold).mean() > 0.5


def test_the_ceiling_command_reports_every_style_asked(mnist_path: Path, tmp_path: Path):
    torch.manual_seed(0)
    state = tmp_path / "net.pt"
    torch.save(DigitNet().eval().state_dict(), state)
    command = [sys.executable, "-m", "digitloop_bench.drift", "ceiling", "--json",
               "--model-file", str(state), "--shift", "thick", "--shift", "typeset",
               "--pool", "120", "--held-out", "200", "--windows", "20",
               "--window-size", "50", "--threads", "1"]  # fmt: skip
    env = {
        **os.environ,
        "DIGITLOOP_MNIST_PATH": str(mnist_path),
        "DIGITLOOP_DRIFT_REFERENCE_SIZE": "300",
    }
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["styles"]) == {"thick", "typeset"}
    thick, typeset = result["styles"]["thick"], result["styles"]["typeset"]
    assert thick["control_flagged"] is not None and typeset["control_flagged"] is None
    for row in (thick, typeset):
        assert 0 <= row["flagged"] <= 1 and row["windows"] == 20
        assert set(row["hits"]) == set(row["false_alarms"]) == {"mnist", "canvas"}
        assert all(0 <= v <= 20 for v in [*row["hits"].values(), *row["false_alarms"].values()])
        # Its threshold flags at most the share of either held-out source.
        assert max(row["held_out_flagged"].values()) <= result["share"] + 1e-9

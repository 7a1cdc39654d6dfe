"""The geometry window test's features, scorer and calibration (pipelines.drift.geometry)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import binom

from model.network import DigitNet
from model.preprocess import preprocess_batch
from model.styles import restyle
from pipelines.drift.geometry import (
    GEOMETRY_COLUMNS,
    fit_geometry,
    geometry_features,
    judge_geometry,
    mnist_geometry,
)
from pipelines.drift.reference import ReferenceSpec, mnist_reference

AREA, BOUNDARY, DEPTH, STROKE = (GEOMETRY_COLUMNS.index(c) for c in GEOMETRY_COLUMNS)


def bar(width: int, length: int = 16) -> np.ndarray:
    """A crisp vertical bar, white on black, in the middle of the field."""
    image = np.zeros((28, 28), np.uint8)
    left = 14 - width // 2
    image[6 : 6 + length, left : left + width] = 255
    return image


def test_a_thick_stroke_measures_wider_than_a_thin_one():
    thin, thick = np.exp(geometry_features(np.stack([bar(2), bar(6)])))
    # The mask's own counts, exactly: 2 x 16 pixels, and its outline 2 * (2 + 16) edges.
    assert thin[AREA] == pytest.approx(32) and thin[BOUNDARY] == pytest.approx(36)
    assert thick[AREA] == pytest.approx(96) and thick[BOUNDARY] == pytest.approx(44)
    # Every pixel of a 2-px stroke touches the background; a 6-px one's middle is 3 deep.
    assert thin[DEPTH] == pytest.approx(1.0) and thick[DEPTH] > 1.5 * thin[DEPTH]
    # The grey image's estimate, 2 * ink / total variation, is 2 * area / outline here.
    assert thin[STROKE] == pytest.approx(2 * 32 / 36, rel=0.05)
    assert thick[STROKE] == pytest.approx(2 * 96 / 44, rel=0.05)


def test_a_drawings_features_do_not_depend_on_the_rest_of_the_batch(mnist):
    """The distance transform runs on the whole batch at once: no distance crosses images."""
    digits, _ = preprocess_batch(mnist.x_test[:50])
    together = geometry_features(digits)
    alone = np.concatenate([geometry_features(digit[None]) for digit in digits])
    np.testing.assert_allclose(together, alone)


def test_features_refuse_images_of_another_shape():
    with pytest.raises(ValueError, match=r"\(N, 28, 28\)"):
        geometry_features(np.zeros((3, 32, 32), np.uint8))


@pytest.fixture(scope="module")
def digits(mnist) -> tuple[np.ndarray, np.ndarray]:
    """MNIST test digits as the service logs them, with their labels for the answers, in a
    random order: MNIST test's first 5,000 digits and its last are of two populations of
    writers, whose strokes differ (fitted on the first 4,000, it flagged 8 % of the next)."""
    rows = np.random.default_rng(0).permutation(len(mnist.x_test))[:8000]
    images, accepted = preprocess_batch(mnist.x_test[rows])
    return images[accepted], mnist.y_test[rows][accepted]


def test_calibration_flags_the_share_of_fresh_in_distribution_digits_within_its_bound(digits):
    images, labels = digits
    scorer = fit_geometry(images[:4000], labels[:4000], share=0.05)
    assert scorer.share == pytest.approx(0.05, abs=0.002)
    assert (scorer.n_fit, scorer.n_calibration) == (2000, 2000)
    flagged = int(
        scorer.flagged(scorer.score(geometry_features(images[4000:]), labels[4000:])).sum()
    )
    low, high = binom.interval(0.999, len(images) - 4000, scorer.share)
    assert low <= flagged <= high, (flagged, low, high)


def test_a_thick_marker_is_flagged_far_more_often_than_mnist(digits, mnist):
    images, labels = digits
    scorer = fit_geometry(images[:4000], labels[:4000], share=0.05)
    thick, accepted = preprocess_batch(restyle(mnist.x_test[:500], "thick", seed=1))
    answered = mnist.y_test[:500][accepted]
    assert scorer.flagged(scorer.score(geometry_features(thick[accepted]), answered)).mean() > 0.3


def test_a_class_the_scorer_has_no_digits_of_is_unusual(digits):
    images, labels = digits
    scorer = fit_geometry(images[:2000], np.where(labels[:2000] == 7, 1, labels[:2000]))
    assert 7 not in scorer.classes
    scores = scorer.score(geometry_features(images[:3]), np.array([7, 7, 1]))
    assert np.isinf(scores[:2]).all() and np.isfinite(scores[2])


def test_the_window_test_fires_from_its_critical_count(digits):
    images, labels = digits
    base = fit_geometry(images[:4000], labels[:4000], share=0.05)
    window, answered = images[4000:4200], labels[4000:4200]
    ranked = np.sort(base.score(geometry_features(window), answered))
    for flagged, expected in ((19, False), (20, True)):  # 20 of 200 at 5 %: p < 0.005
        threshold = float(ranked[-flagged] + ranked[-flagged - 1]) / 2
        scorer = dataclasses.replace(base, threshold=threshold, share=0.05)
        verdict = judge_geometry(window, answered, scorer, alpha=0.005)
        assert (verdict.flagged, verdict.critical) == (flagged, 20)
        assert verdict.detected is expected


def test_the_scorer_of_a_reference_fits_on_its_own_digits(mnist):
    torch.manual_seed(0)
    net = DigitNet(channels=(8, 16, 32), hidden=32).eval()
    reference = mnist_reference(net, mnist.x_test, ReferenceSpec(size=600, seed=3))
    scorer = mnist_geometry(reference, mnist.x_test, share=0.05)
    # Half of the reference's digits set the threshold; the other half, grouped by the
    # classes the reference recorded, fit the Gaussians (of the classes with enough digits).
    assert scorer.n_calibration == len(reference.features) - len(reference.features) // 2
    answered = reference.features["predicted_class"]
    fitted = answered.value_counts()
    assert set(scorer.classes) <= set(fitted.index)
    assert 0 < scorer.n_fit <= len(reference.features) // 2
    with pytest.raises(ValueError, match="fitted on MNIST test"):
        mnist_geometry(dataclasses.replace(reference, source="traffic"), mnist.x_test, 0.05)

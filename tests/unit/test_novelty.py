"""The per-drawing novelty scorer (model.novelty) and its window test (pipelines.drift.novelty)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import binom

from model.network import DigitNet, model_outputs
from model.novelty import (
    NoveltyScorer,
    Source,
    calibrate_threshold,
    critical_count,
    fit_for_version,
    fit_novelty,
    fit_scorer,
    window_test,
)
from pipelines.drift.novelty import cluster_flagged, clusters_png, judge_window, window_scores

D = 16


def gaussian_classes(n: int, seed: int, offset: float = 0.0) -> tuple[np.ndarray, list[str]]:
    """``n`` embeddings of ten classes, each a unit Gaussian around its own centre."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 4, size=(10, D)) + offset
    labels = rng.integers(0, 10, size=n)
    return centres[labels] + rng.normal(size=(n, D)), [f"mnist:{c}" for c in labels]


def calibrated(share: float = 0.01) -> NoveltyScorer:
    fit, groups = gaussian_classes(5000, seed=1)
    scorer = fit_scorer(fit, groups, share)
    held_out, _ = gaussian_classes(10000, seed=2)
    threshold, flagged, _ = calibrate_threshold({"mnist": scorer.score(held_out)}, share)
    return dataclasses.replace(scorer, threshold=threshold, share=flagged)


def test_calibration_flags_the_share_of_fresh_in_distribution_data_within_its_bound():
    scorer = calibrated(0.01)
    assert scorer.share == pytest.approx(0.01, abs=0.001)
    fresh, _ = gaussian_classes(20000, seed=3)
    flagged = int(scorer.flagged(scorer.score(fresh)).sum())
    # Within the two-sided 99.9 % binomial range of 20,000 draws at the calibrated share.
    low, high = binom.interval(0.999, 20000, scorer.share)
    assert low <= flagged <= high, (flagged, low, high)


def test_a_shifted_population_is_flagged_far_more_often():
    scorer = calibrated(0.01)
    shifted, _ = gaussian_classes(2000, seed=4, offset=3.0)
    assert scorer.flagged(scorer.score(shifted)).mean() > 0.5


def test_the_threshold_holds_for_every_source_the_version_was_built_for():
    mnist, mnist_groups = gaussian_classes(5000, seed=1)
    traffic, traffic_groups = gaussian_classes(3000, seed=5, offset=3.0)
    groups = mnist_groups + [g.replace("mnist", "traffic") for g in traffic_groups]
    scorer = fit_scorer(np.concatenate([mnist, traffic]), groups)
    held_mnist, _ = gaussian_classes(5000, seed=6)
    held_traffic, _ = gaussian_classes(5000, seed=7, offset=3.0)
    threshold, share, n = calibrate_threshold(
        {"mnist": scorer.score(held_mnist), "traffic": scorer.score(held_traffic)}, 0.01
    )
    assert n == 10000 and share <= 0.01
    # The population the version was adapted to has its own components: not novel to it.
    fresh_traffic, _ = gaussian_classes(5000, seed=8, offset=3.0)
    assert (scorer.score(fresh_traffic) > threshold).mean() < 0.02
    # Without those components it would be flagged nearly always.
    mnist_only = fit_scorer(mnist, mnist_groups)
    mnist_threshold, _, _ = calibrate_threshold({"mnist": mnist_only.score(held_mnist)}, 0.01)
    assert (mnist_only.score(fresh_traffic) > mnist_threshold).mean() > 0.5


def test_calibration_refuses_what_it_cannot_calibrate_on():
    with pytest.raises(ValueError, match="share"):
        calibrate_threshold({"mnist": np.zeros(100)}, 0.0)
    with pytest.raises(ValueError, match="50 scores"):
        calibrate_threshold({"mnist": np.zeros(49)}, 0.01)
    with pytest.raises(ValueError, match="20 members"):
        fit_scorer(np.zeros((19, D)), ["mnist:0"] * 19)


def test_the_scorer_survives_its_serialised_form():
    scorer = calibrated()
    again = NoveltyScorer.from_bytes(scorer.to_bytes())
    probe, _ = gaussian_classes(50, seed=9)
    np.testing.assert_allclose(again.score(probe), scorer.score(probe), rtol=1e-5)
    assert again.summary() == scorer.summary()
    assert len(scorer.to_bytes()) < 200_000


@pytest.mark.parametrize(("n", "share", "alpha"), [(200, 0.01, 0.005), (400, 0.01, 0.005)])
def test_the_window_test_fires_from_exactly_its_critical_count(n, share, alpha):
    k = critical_count(n, share, alpha)
    # The exact binomial tail: k flagged is beyond alpha, k - 1 is not.
    assert binom.sf(k - 1, n, share) < alpha <= binom.sf(k - 2, n, share)
    assert window_test(k, n, share, alpha)[0] is True
    assert window_test(k - 1, n, share, alpha)[0] is False
    if (n, share, alpha) == (200, 0.01, 0.005):
        assert k == 7  # 2 expected: 7 flagged drawings of 200 are drift


def test_the_window_test_counts_flags_above_the_threshold_only():
    scorer = calibrated()
    k = critical_count(200, scorer.share, 0.005)
    at = np.full(200, scorer.threshold - 1.0, np.float32)
    at[:k] = scorer.threshold + 1.0
    assert judge_window(at, scorer, 0.005).detected
    at[k - 1] = scorer.threshold  # equal to the threshold is not above it
    verdict = judge_window(at, scorer, 0.005)
    assert not verdict.detected and verdict.flagged == k - 1 and verdict.critical == k


def test_the_window_prefers_the_champions_logged_scores():
    scorer = calibrated()
    embeddings, _ = gaussian_classes(60, seed=5, offset=2.0)
    frame = pd.DataFrame(
        {
            "model_version": ["3"] * 30 + ["2"] * 30,
            "novelty": [123.0] * 20 + [None] * 10 + [456.0] * 30,
        }
    )
    scores, from_log = window_scores(frame, embeddings, scorer, "3")
    assert from_log == 20
    assert (scores[:20] == 123.0).all()
    # The rest from their own rows' embeddings: v2's logged scores are not v3's.
    np.testing.assert_array_equal(scores[20:], scorer.score(embeddings[20:]))


def test_fit_novelty_calibrates_on_held_out_images():
    torch.manual_seed(0)
    net = DigitNet().eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(600, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 2, size=600)
    scorer = fit_novelty(
        net,
        [Source("mnist", images[:300], labels[:300])],
        [Source("mnist", images[300:], labels[300:])],
        0.05,
    )
    assert scorer.n_fit == 300 and scorer.n_calibration == 300
    assert scorer.share == pytest.approx(0.05, abs=0.01)
    assert set(scorer.components) == {"mnist:0", "mnist:1"}


def test_flagged_drawings_fall_into_the_groups_they_came_from():
    rng = np.random.default_rng(0)
    sevens = rng.normal(0, 1, size=(12, D)) + 10.0  # one new way of writing a 7
    blobs = rng.normal(0, 1, size=(8, D)) - 10.0  # and a smudged pen
    embeddings = np.concatenate([sevens, blobs])
    scores = np.arange(20, dtype=np.float32)
    labels = np.array([7] * 12 + [0] * 8)
    clusters = cluster_flagged(embeddings, scores, labels)
    assert [c.size for c in clusters] == [12, 8]
    assert set(clusters[0].members) == set(range(12)) and clusters[0].answered == {7: 12}
    assert clusters[1].members[0] == 19  # most unusual first
    images = np.zeros((20, 28, 28), np.uint8)
    assert clusters_png(images, clusters).startswith(b"\x89PNG")
    # Too few for two groups of MIN_PER_CLUSTER: one group; none flagged: none.
    assert [c.size for c in cluster_flagged(embeddings[:7], scores[:7], labels[:7])] == [7]
    assert cluster_flagged(embeddings[:0], scores[:0], labels[:0]) == []


def test_a_version_fine_tuned_on_new_traffic_does_not_find_that_traffic_novel(mnist):
    """fit_for_version on the traffic a version was adapted to (here MNIST inverted, a
    population no MNIST scorer knows): fresh drawings of it are flagged at about the
    calibrated share, where a scorer of MNIST alone flags most of them."""
    torch.manual_seed(0)
    net = DigitNet().eval()

    def inverted(start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        rows = slice(start, start + n)
        return (255 - mnist.x_train[rows]).astype(np.uint8), mnist.y_train[rows]

    train = (mnist.x_train[:2000], mnist.y_train[:2000])
    test = (mnist.x_test[:1000], mnist.y_test[:1000])
    adapted = fit_for_version(
        net,
        train,
        test,
        0.05,
        traffic=[Source("traffic", *inverted(2000, 600))],
        traffic_held_out=[Source("traffic", *inverted(2600, 200))],
        fit_size=2000,
    )
    plain = fit_for_version(net, train, test, 0.05, fit_size=2000)
    assert {c.split(":")[0] for c in adapted.components} == {"mnist", "traffic"}
    fresh = model_outputs(net, inverted(3000, 500)[0]).embeddings
    assert adapted.flagged(adapted.score(fresh)).mean() < 0.1
    assert plain.flagged(plain.score(fresh)).mean() > 0.5


def test_the_score_is_the_relative_mahalanobis_distance():
    """min_k (z - m_k)' P (z - m_k) - (z - m0)' P0 (z - m0), as the docstring defines it."""
    scorer = calibrated()
    z, _ = gaussian_classes(30, seed=11, offset=1.0)
    w, w0 = scorer.whitening.astype(np.float64), scorer.background_whitening.astype(np.float64)
    nearest = np.min(
        [np.square((z - m) @ w).sum(axis=1) for m in scorer.means.astype(np.float64)], axis=0
    )
    background = np.square((z - scorer.background_mean) @ w0).sum(axis=1)
    np.testing.assert_allclose(scorer.score(z), nearest - background, rtol=1e-4, atol=1e-2)

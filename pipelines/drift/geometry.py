"""The geometry window test: more drawings of unusual stroke geometry than MNIST allows.

The embedding novelty test (:mod:`pipelines.drift.novelty`) cannot see a thick marker or a
hairline pen: the network was trained to answer them alike. The logged 28x28 image still
shows them. Per drawing, four measurements of its ink mask and strokes
(:func:`geometry_features`) are compared with MNIST's for the class the champion answered,
by a Mahalanobis distance; a threshold flags a known share of held-out MNIST digits, and a
window with more flagged drawings than that share allows (the one-sided binomial test of
:func:`model.novelty.window_test`) drifts. It is computed in the drift step from the
logged images, so the service pays nothing for it.

Fitted on the drift reference's half of MNIST test (as logged), which windows of the
bench never draw from: one half of it fits each class's Gaussian, the other sets the
threshold, so the threshold is not fitted on the digits it measures.

Why these four, measured with ``python -m digitloop_bench.drift novelty``'s populations
(flagged share of each population per drawing at a 5 % threshold): measures of the ink's
*intensity* texture see every shifted population (the mean gradient magnitude alone flags
69-100 % of each; mean ink intensity, the Laplacian's energy and the share of saturated
pixels 64-99 % of rotated, shifted and wobbly digits), but they flag as much of MNIST's own
digits drawn large on a sketchpad canvas and preprocessed
(:func:`digitloop_bench.serving.loadgen.render_sketch`: 60-78 % for the gradient
magnitude, 26-48 % with gradient energy in the set, 12 % with mass and pixel count
together): they see PIL's resampling rather than MNIST's, which every drawing of the
real sketchpad goes through. The four kept measure the mask's shape and strokes and flag
5.7 % of those sketchpad digits (4.6 % of held-out MNIST); the principal axis's
angle, the slant and the second moments added nothing. One Gaussian per answered class,
since a 1's ink is not an 8's: in the same comparison it flagged more of every population
the four see than one Gaussian of all digits (thick 51 % against 40 %, typeset 21 %
against 9 %). Per drawing the drift step's scorer flags thick 50 %, seven-segment 52 %,
thin 39 %, small off-centre 23 %, typeset 22 %, and rotated, shifted and wobbly 6-10 %:
the preprocessing re-centres and rescales, so a tilted or shaky hand leaves the mask's
size and width as MNIST's.

The window test, alone and with the other two, measured with ``python -m
digitloop_bench.drift novelty --threads 1 --mix 0.1 --mix 0.25 --mix 1.0`` (the bench's
quick 2-epoch model, 200-image windows; "either" is Evidently or the novelty test, today's
verdict before this test; hits of 50 windows, false alarms of 300 MNIST windows):

========================  ============  =======================  ==========================
population                geometry      either                   either (+geometry)
                          10, 25, 100%  10, 25, 100 %            10, 25, 100 %
========================  ============  =======================  ==========================
MNIST (false alarms)      0/300         6/300                    6/300
thick                     20, 50, 50    3, 39, 50                22, 50, 50
thin                      10, 44, 50    0, 37, 50                10, 47, 50
seven-segment             22, 50, 50    15, 48, 50               31, 50, 50
small off-centre          0, 19, 50     2, 39, 50                2, 45, 50
typeset                   1, 15, 50     5, 31, 50                6, 33, 50
rotated                   0, 0, 3       1, 5, 50                 1, 5, 50
shifted                   0, 0, 2       2, 2, 50                 2, 2, 50
wobbly                    0, 1, 24      0, 2, 48                 0, 3, 48
hits of the 10 and 25 %   232           231                      309
========================  ============  =======================  ==========================

At 400 images (``--window-size 400``, the loop's ``drift_window``) the 10 and 25 % rows
went from 350 to 414 hits, false alarms 8/300 either way. ``drift_geometry_alpha`` 0.005,
as the novelty test's: at 0.01 the 200-image rows rose to 328 hits with no new false
alarm, but 400-image windows false-alarmed on 9 of 300 (3.0 %, the issue's bound); at 0.02,
348 hits and 8 of 300 at 200 images. Fitting the scorer (preprocessing the reference's
5,000 digits) takes about 5 s of the drift step, scoring a 400-image window 0.07 s.

MNIST test's two populations of writers differ here too: fitted on its first 4,000 digits
(Census employees), it flagged 8 % of the next 4,000 (partly students); the reference's
half is a random draw of both, as are the bench's windows. The novelty bench's
"sketchpad" row draws the same held-out digits on the canvas
(:func:`digitloop_bench.shifts.on_the_canvas`): the geometry test flagged 5.2 % of them
per drawing (4.6 % of MNIST as logged) and alarmed on 3 of 300 of their 200-image windows
and 2 of 300 400-image ones. Evidently's columns alarmed on 64 and 166 of those 300: that
brush draws strokes about 5 % wider than MNIST's pens, and the ``stroke_width`` column's
KS test sees it, more surely the larger the window.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from model.novelty import calibrate_threshold
from model.preprocess import INK_THRESHOLD, MNIST_SIZE, preprocess_batch
from pipelines.drift.features import CLASS_COLUMN, stroke_width
from pipelines.drift.novelty import NoveltyWindow, judge_window
from pipelines.drift.reference import MNIST_SOURCE, Reference, split_indices

GEOMETRY_COLUMNS: tuple[str, ...] = ("ink_area", "boundary", "depth", "stroke_width")
# A class's Gaussian needs a few times its 14 parameters (4 means, 10 covariances).
MIN_CLASS = 40
# Far larger than any in-image distance (at most the 30-px padded diagonal), so the batched
# distance transform never measures a distance across images.
_BATCH_SPACING = 1000.0


def geometry_features(images: np.ndarray) -> np.ndarray:
    """Logs of four measurements of (N, 28, 28) uint8 digits as logged (white ink), (N, 4).

    - ``ink_area``: pixels at or above the preprocessing's ink threshold;
    - ``boundary``: edges between ink and background pixels (4-neighbours);
    - ``depth``: mean distance of an ink pixel to the background (Euclidean distance
      transform): half a stroke's width, from the mask alone;
    - ``stroke_width``: ``2 * ink / total variation`` of the grey image
      (:func:`pipelines.drift.features.stroke_width`).

    Logs, since each is a positive size whose spread grows with it.
    """
    x = np.asarray(images)
    if x.ndim != 3 or x.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
        raise ValueError(f"expected (N, 28, 28) images, got shape {x.shape}")
    grey = x.astype(np.float32) / 255.0
    padded = np.pad(grey, ((0, 0), (1, 1), (1, 1)))
    ink = padded >= INK_THRESHOLD
    area = ink.sum(axis=(1, 2))
    boundary = (ink[:, 1:, :] != ink[:, :-1, :]).sum(axis=(1, 2)) + (
        ink[:, :, 1:] != ink[:, :, :-1]
    ).sum(axis=(1, 2))
    distance = ndimage.distance_transform_edt(ink, sampling=(_BATCH_SPACING, 1.0, 1.0))
    depth = distance.sum(axis=(1, 2)) / np.maximum(area, 1)
    stroke = stroke_width(grey)
    measured = np.stack([area, boundary, depth, stroke], axis=1).astype(np.float64)
    # An empty image (never logged: preprocessing refuses it) would give log(0).
    return np.log(np.maximum(measured, 1e-3))


@dataclass(frozen=True)
class GeometryScorer:
    """Per answered class, the mean and precision of MNIST's geometry features, and the
    threshold above which a drawing's squared Mahalanobis distance is flagged."""

    classes: np.ndarray  # (K,) int: the answered classes with a Gaussian
    means: np.ndarray  # (K, F)
    precisions: np.ndarray  # (K, F, F)
    threshold: float
    share: float  # flagged share of the calibration digits at the threshold
    target_share: float
    n_fit: int
    n_calibration: int

    def score(self, features: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance (N,) of features (N, F) to their answered class's
        Gaussian; +inf for a class it has none of (a class MNIST never had is unusual)."""
        features = np.asarray(features, np.float64)
        slot = np.searchsorted(self.classes, predicted)
        known = (slot < len(self.classes)) & (
            self.classes[np.minimum(slot, len(self.classes) - 1)] == predicted
        )
        scores = np.full(len(features), np.inf)
        slot = slot[known]
        diff = features[known] - self.means[slot]
        scores[known] = np.einsum("nf,nfg,ng->n", diff, self.precisions[slot], diff)
        return scores

    def flagged(self, scores: np.ndarray) -> np.ndarray:
        """Which scores are unusual: above the threshold."""
        return np.asarray(scores) > self.threshold

    def summary(self) -> dict[str, object]:
        return {
            "method": "per-class Mahalanobis of " + ", ".join(GEOMETRY_COLUMNS),
            "threshold": round(self.threshold, 6),
            "share": round(self.share, 6),
            "target_share": self.target_share,
            "classes": len(self.classes),
            "n_fit": self.n_fit,
            "n_calibration": self.n_calibration,
        }


def fit_geometry(
    images: np.ndarray,
    predicted: np.ndarray,
    share: float = 0.05,
    seed: int = 0,
    min_class: int = MIN_CLASS,
) -> GeometryScorer:
    """Fit on a random half of in-distribution ``images`` (as logged) grouped by the class
    the champion answered (``predicted``), and set the threshold on the other half so it
    flags ``share`` of it (:func:`model.novelty.calibrate_threshold`).

    Raises:
        ValueError: no class has ``min_class`` digits in the fitting half, or the other half
            is too small to calibrate on.
    """
    from sklearn.covariance import LedoitWolf

    features = geometry_features(images)
    predicted = np.asarray(predicted)
    order = np.random.default_rng(seed).permutation(len(features))
    fit, calibration = order[: len(order) // 2], order[len(order) // 2 :]
    classes, counts = np.unique(predicted[fit], return_counts=True)
    classes = classes[counts >= min_class]
    if not len(classes):
        raise ValueError(f"no answered class has {min_class} digits to fit on")
    gaussians = [LedoitWolf().fit(features[fit][predicted[fit] == c]) for c in classes]
    draft = GeometryScorer(
        classes=classes.astype(np.int64),
        means=np.stack([g.location_ for g in gaussians]),
        precisions=np.stack([g.precision_ for g in gaussians]),
        threshold=float("inf"),
        share=0.0,
        target_share=share,
        n_fit=int(np.isin(predicted[fit], classes).sum()),
        n_calibration=0,
    )
    scores = draft.score(features[calibration], predicted[calibration])
    threshold, flagged, n = calibrate_threshold({"mnist": scores}, share)
    return replace(draft, threshold=threshold, share=flagged, n_calibration=n)


def mnist_geometry(reference: Reference, mnist_test: np.ndarray, share: float) -> GeometryScorer:
    """The scorer of the MNIST ``reference``'s own digits: its half of MNIST test as logged,
    grouped by the classes the reference recorded its version answering (no forward pass).

    Raises:
        ValueError: ``reference`` is not of MNIST test, or its digits are not these.
    """
    if reference.source != MNIST_SOURCE:
        raise ValueError(f"the geometry scorer is fitted on MNIST test, not {reference.source}")
    rows, _ = split_indices(len(mnist_test), reference.spec.size, reference.spec.seed)
    images, accepted = preprocess_batch(mnist_test[rows])
    answered = reference.features[CLASS_COLUMN].to_numpy()
    if int(accepted.sum()) != len(answered):
        raise ValueError(
            f"the reference has {len(answered)} digits, its half of MNIST test {accepted.sum()}"
        )
    return fit_geometry(images[accepted], answered, share, reference.spec.seed)


def judge_geometry(
    images: np.ndarray, answered: np.ndarray, scorer: GeometryScorer, alpha: float
) -> NoveltyWindow:
    """The binomial test of a window's (images as logged, the classes answered) count of
    drawings of unusual geometry against the scorer's share."""
    return judge_window(scorer.score(geometry_features(images), answered), scorer, alpha)

"""How unusual one drawing is for a model version: a per-drawing novelty score.

The score is the Mahalanobis distance of the drawing's embedding (the network's 128-d
penultimate layer, :meth:`model.network.DigitNet.embed`) to the nearest component of the
version's training data, with one covariance shared by every component (Lee et al., 2018):
a component per class and per training source. A version trained on MNIST has the ten
classes of MNIST; one fine-tuned on feedback also has the ten classes of the feedback (and
pseudo-labels) it was adapted to, so the population it was adapted to is not novel to it.
The shared covariance is Ledoit-Wolf's shrunk estimate (scikit-learn) of the residuals.

The threshold is fitted on held-out in-distribution data so that a known share
(``novelty_share``, 1 % by default) of it is flagged: per source (MNIST test, the feedback
held out for the gate), the highest threshold of them, so that no source it was built for
is flagged more than that share. The share measured there is what a window's flagged share
is tested against (:func:`window_test`).

Chosen by measurement: ``python -m digitloop_bench.drift novelty --model-file quick.pt
--share S --threads 1`` (``quick.pt`` the bench's quick model, 20,000 MNIST digits, 2
epochs, seed 0; every score fitted on 10,000 MNIST training digits and thresholded at the
``1 - S`` quantile of the drift reference's 5,000 MNIST test digits; 200-image windows, the
one-sided binomial test at p < 0.005; windows detected / windows run, the same windows for
every score):

=======================  =========  =======  ===========  ====================
S = 5 %                  max prob.  energy   Mahalanobis  relative Mahalanobis
=======================  =========  =======  ===========  ====================
MNIST (false alarms)     1/300      0/300    0/300        0/300
25 % small off-centre    5/50       5/50     44/50        36/50
25 % typeset             42/50      39/50    7/50         28/50
25 % seven-segment       48/50      48/50    33/50        48/50
25 % thin                2/50       3/50     5/50         8/50
25 % rotated             1/50       1/50     6/50         4/50
25 % thick, shifted,     <= 1/50    <= 1/50  <= 3/50      <= 1/50
wobbly (each)
total of the 25 % rows   99         97       99           127
=======================  =========  =======  ===========  ====================

At S = 1 % the same windows gave totals of 40, 49, 55 and 60, and plain Mahalanobis
false-alarmed on 8 of 300 MNIST windows (1 of 300 for the relative one): its 1 % tail
rests on 50 of the 5,000 calibration digits, and flagged 1.4 % of the other half. Hence
the default share of 5 % (``novelty_share``). A k-nearest-neighbour distance (k = 10 on
10,000 normalised embeddings) flagged shifted drawings about as often as relative
Mahalanobis but took 1.4 ms a request (scikit-learn, one thread) against tens of
microseconds: not in the service.

Per drawing the built-in styles are hard to tell from MNIST: the service's preprocessing
re-centres and rescales every digit, and the network was trained with augmentation
(thicker and thinner strokes, shifts, rotations) to answer them all the same, so its
embedding hardly moves for a thick or wobbly pen. At S = 5 % the scorer flagged 11 % of
thick drawings, 10 % of shifted, 12 % of wobbly (4.5 % of MNIST): a 10 % minority of
those adds one or two flags to a window's ten expected ones. What it does see is drawings
the network has not learnt to map onto MNIST: small off-centre digits (30 % flagged),
typeset (28 %) and seven-segment digits (46 %).

The window test and Evidently's, alone and either (the drift step's verdict), at S = 5 %
on 200-image windows and on 400 (the loop's ``drift_window``; ``--window-size 400``):

=========================  ==============================  ==============================
population, shifted share  200: novelty, Evidently, either  400: novelty, Evidently, either
=========================  ==============================  ==============================
MNIST (false alarms)       0, 6, 6 of 300 (2.0 %)          0, 8, 8 of 300 (2.7 %)
seven-segment 10 %         15, 3, 15 of 50                 31, 2, 32 of 50
small off-centre 10 %      2, 0, 2 of 50                   9, 1, 10 of 50
typeset 10 %               2, 3, 5 of 50                   7, 1, 8 of 50
thick, thin, rotated,      at most 1, 3, 3 of 50           at most 1, 6, 7 of 50
shifted, wobbly 10 %
seven-segment 25 %         48, 43, 48 of 50                50, 50, 50 of 50
small off-centre 25 %      36, 19, 39 of 50                49, 35, 50 of 50
typeset 25 %               28, 14, 31 of 50                46, 34, 49 of 50
thick 25 %                 1, 39, 39 of 50                 1, 50, 50 of 50
thin 25 %                  8, 35, 37 of 50                 23, 50, 50 of 50
rotated 25 %               4, 1, 5 of 50                   19, 9, 25 of 50
wobbly 25 %                1, 1, 2 of 50                   5, 4, 7 of 50
shifted 25 %               1, 1, 2 of 50                   0, 1, 1 of 50
every style 100 %          either 48-50 of 50              either 50 of 50
=========================  ==============================  ==============================

The window test adds no false alarm to Evidently's on 300 clean windows at either size.
Drawn on the sketchpad's canvas (the bench's "sketchpad" row, the same held-out digits
through the load bench's brush), 5.0 % of drawings were flagged and 2 of 300 200-image
windows and 0 of 300 400-image ones alarmed; Evidently's columns alarmed on 64 and 166 of
them (the brush's strokes are about 5 % wider than MNIST's, see
:mod:`pipelines.drift.geometry`).

With a stronger network (8 epochs on all 60,000 MNIST digits with augmentation, as
``digitloop train`` trains the champion; ``--model-file champ8.pt``, 200-image windows,
S = 5 %) the scores separate more: seven-segment windows at 10 % were caught 46 of 50
(novelty 45, Evidently 8), the one style that meets the 0.8 goal at 10 %; at 25 %
seven-segment 50, thick 40, thin 36, typeset 30, small off-centre 23, wobbly 3, rotated 4,
shifted 2 of 50 (either test); all styles 50 of 50 at 100 % but wobbly (45); false alarms
6 of 300 (2.0 %; novelty 1, Evidently 5). Max-probability and energy caught nothing of
typeset or small off-centre at 25 % with this network (0-7 of 50), relative Mahalanobis
21 and 18.

Cost: the novelty stage of the in-process cost bench
(:func:`digitloop_bench.serving.cost.measure`, what ``make bench`` runs; 256 sketch PNGs,
3 rounds, one thread) took 0.076 ms a request, the forward pass 1.20 ms, on 2 cores at a
load average of 5 (DESIGN.md's forward pass on an idle machine: 0.45 ms).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from model.network import model_outputs

METHOD = "relative_mahalanobis"
# Components with fewer members than this are dropped: their mean is too noisy to trust
# (ten labelled sevens of a new population would make every other seven look novel).
MIN_COMPONENT = 20
FORMAT_VERSION = 1
# MNIST training digits a scorer is fitted on (a random draw): about a thousand per class
# for its ten means and one 128 x 128 covariance, at a few seconds of preprocessing.
FIT_SIZE = 10000


@dataclass(frozen=True)
class Source:
    """Training images of one source (MNIST, feedback, pseudo-labels) with their labels."""

    name: str
    images: np.ndarray  # (N, 28, 28) uint8, as the service logs them
    labels: np.ndarray  # (N,)


@dataclass(frozen=True)
class NoveltyScorer:
    """Component means, a whitening of their shared covariance, a background Gaussian,
    and the fitted threshold.

    ``score`` of an embedding z is ``min_k ||(z - mean_k) W||^2 - ||(z - mean_0) W_0||^2``:
    the squared Mahalanobis distance to the nearest component (``W W^T`` the precision of
    the shared covariance) minus that to one Gaussian of all the training embeddings
    (Ren et al., 2021, "relative Mahalanobis"). The second term removes what every digit
    varies in, which plain Mahalanobis counts as novelty.
    """

    means: np.ndarray  # (K, D) float32
    whitening: np.ndarray  # (D, D) float32
    background_mean: np.ndarray  # (D,) float32
    background_whitening: np.ndarray  # (D, D) float32
    components: tuple[str, ...]  # "<source>:<class>" per mean
    threshold: float
    share: float  # flagged share of the held-out in-distribution data at the threshold
    target_share: float  # what the threshold was fitted for
    n_fit: int
    n_calibration: int
    method: str = METHOD

    def __post_init__(self) -> None:
        # Expanded once into a quadratic form, so a request costs one (N, D) x (D, D) and one
        # (N, D) x (D, K) product: with P, P0 the two precisions,
        #   (z - m_k)' P (z - m_k) - (z - m0)' P0 (z - m0)
        #     = z' (P - P0) z + z' (2 P0 m0 - 2 P m_k) + (m_k' P m_k - m0' P0 m0).
        # Half the arithmetic and memory of whitening twice: 0.12 ms against 0.17 ms a
        # request in one run of the in-process cost bench. Precomputed in float64.
        whitening = self.whitening.astype(np.float64)
        background = self.background_whitening.astype(np.float64)
        precision, precision_0 = whitening @ whitening.T, background @ background.T
        means, mean_0 = self.means.astype(np.float64), self.background_mean.astype(np.float64)
        linear = 2.0 * (precision_0 @ mean_0)[:, None] - 2.0 * (precision @ means.T)
        constant = np.einsum("kd,de,ke->k", means, precision, means) - mean_0 @ precision_0 @ mean_0
        for name, value in (
            ("_quadratic", precision - precision_0),
            ("_linear", linear),
            ("_constant", constant),
        ):
            object.__setattr__(self, name, np.ascontiguousarray(value, np.float32))

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """The novelty (N,) float32 of embeddings (N, D); higher is more unusual."""
        z = np.asarray(embeddings, dtype=np.float32)
        nearest = (z @ self._linear + self._constant).min(axis=1)
        return ((z @ self._quadratic * z).sum(axis=1) + nearest).astype(np.float32)

    def flagged(self, scores: np.ndarray) -> np.ndarray:
        """Which scores are unusual: above the threshold."""
        return np.asarray(scores) > self.threshold

    def summary(self) -> dict[str, object]:
        """What the registry tag holds: small, readable, without the arrays."""
        return {
            "method": self.method,
            "threshold": round(self.threshold, 6),
            "share": round(self.share, 6),
            "target_share": self.target_share,
            "components": len(self.components),
            "n_fit": self.n_fit,
            "n_calibration": self.n_calibration,
        }

    def to_bytes(self) -> bytes:
        """The scorer as one ``.npz`` (about 130 kB for a 128-d embedding)."""
        buffer = io.BytesIO()
        meta = {
            **self.summary(),
            "threshold": self.threshold,
            "share": self.share,
            "components": list(self.components),
            "format": FORMAT_VERSION,
        }
        np.savez_compressed(
            buffer,
            means=self.means.astype(np.float32),
            whitening=self.whitening.astype(np.float32),
            background_mean=self.background_mean.astype(np.float32),
            background_whitening=self.background_whitening.astype(np.float32),
            meta=np.array(json.dumps(meta)),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> NoveltyScorer:
        """Read :meth:`to_bytes`' form back.

        Raises:
            ValueError: not a scorer, or one of another format.
        """
        with np.load(io.BytesIO(data), allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"unknown novelty scorer format {meta.get('format')!r}")
            return cls(
                means=saved["means"],
                whitening=saved["whitening"],
                background_mean=saved["background_mean"],
                background_whitening=saved["background_whitening"],
                components=tuple(meta["components"]),
                threshold=float(meta["threshold"]),
                share=float(meta["share"]),
                target_share=float(meta["target_share"]),
                n_fit=int(meta["n_fit"]),
                n_calibration=int(meta["n_calibration"]),
                method=str(meta["method"]),
            )


def fit_scorer(
    embeddings: np.ndarray,
    groups: Sequence[str],
    target_share: float = 0.05,
    min_component: int = MIN_COMPONENT,
) -> NoveltyScorer:
    """An uncalibrated scorer (threshold +inf): the means of each group with at least
    ``min_component`` members, the Ledoit-Wolf covariance of the residuals shared by them,
    and a Ledoit-Wolf Gaussian of all their members (the background).

    Raises:
        ValueError: no group is large enough.
    """
    from sklearn.covariance import LedoitWolf

    embeddings = np.asarray(embeddings, dtype=np.float64)
    groups = np.asarray(groups)
    names, counts = np.unique(groups, return_counts=True)
    kept = tuple(str(n) for n, c in zip(names, counts, strict=True) if c >= min_component)
    if not kept:
        raise ValueError(f"no component has {min_component} members (groups: {len(names)})")
    means = np.stack([embeddings[groups == name].mean(axis=0) for name in kept])
    members = np.isin(groups, kept)
    index = {name: i for i, name in enumerate(kept)}
    residuals = embeddings[members] - means[[index[g] for g in groups[members]]]
    shared = LedoitWolf(assume_centered=True).fit(residuals)
    background = LedoitWolf().fit(embeddings[members])
    # precision = L L^T, so (z - m)^T P (z - m) = ||(z - m) @ L||^2.
    return NoveltyScorer(
        means=means.astype(np.float32),
        whitening=np.linalg.cholesky(shared.precision_).astype(np.float32),
        background_mean=background.location_.astype(np.float32),
        background_whitening=np.linalg.cholesky(background.precision_).astype(np.float32),
        components=kept,
        threshold=float("inf"),
        share=0.0,
        target_share=target_share,
        n_fit=int(members.sum()),
        n_calibration=0,
    )


def calibrate_threshold(
    held_out: dict[str, np.ndarray], share: float, min_source: int = 50
) -> tuple[float, float, int]:
    """The threshold that flags at most ``share`` of each held-out source's scores.

    Each source of at least ``min_source`` scores gives its ``1 - share`` quantile; the
    highest is the threshold, so no population the version was built for is flagged more
    than ``share``. Returns the threshold, the largest flagged share of a source at it (the
    share a window is tested against) and how many scores took part.

    Raises:
        ValueError: ``share`` not in (0, 0.5), or no source has ``min_source`` scores.
    """
    if not 0.0 < share < 0.5:
        raise ValueError(f"share must be in (0, 0.5), got {share}")
    used = {name: np.asarray(s, np.float64) for name, s in held_out.items() if len(s) >= min_source}
    if not used:
        raise ValueError(f"no held-out source has {min_source} scores to calibrate on")
    threshold = max(float(np.quantile(s, 1.0 - share, method="higher")) for s in used.values())
    flagged = max(float((s > threshold).mean()) for s in used.values())
    return threshold, flagged, sum(len(s) for s in used.values())


def fit_novelty(
    net: nn.Module,
    train: Sequence[Source],
    held_out: Sequence[Source],
    share: float = 0.05,
    max_per_source: int = 10000,
    seed: int = 0,
) -> NoveltyScorer:
    """Fit a version's scorer on its own training data and calibrate it on held-out data.

    ``train`` is what the version was trained on, per source (MNIST, feedback,
    pseudo-labels), at most ``max_per_source`` images of each (a random draw with
    ``seed``); ``held_out`` is in-distribution data it never trained on (MNIST test, the
    gate's held-out feedback). Images are as the service logs them (after
    :func:`model.preprocess.to_mnist`), so the threshold holds for what it serves.
    """
    rng = np.random.default_rng(seed)
    embeddings, groups = [], []
    for source in train:
        rows = np.arange(len(source.images))
        if len(rows) > max_per_source:
            rows = np.sort(rng.choice(rows, size=max_per_source, replace=False))
        if not len(rows):
            continue
        embeddings.append(model_outputs(net, source.images[rows]).embeddings)
        groups.extend(f"{source.name}:{int(c)}" for c in np.asarray(source.labels)[rows])
    if not embeddings:
        raise ValueError("no training images to fit a novelty scorer on")
    draft = fit_scorer(np.concatenate(embeddings), groups, share)
    scores = {
        s.name: draft.score(model_outputs(net, s.images).embeddings)
        for s in held_out
        if len(s.images)
    }
    threshold, flagged, n = calibrate_threshold(scores, share)
    return dataclasses.replace(draft, threshold=threshold, share=flagged, n_calibration=n)


def window_test(flagged: int, n: int, share: float, alpha: float) -> tuple[bool, float]:
    """Does a window hold more flagged drawings than the calibrated ``share`` allows?

    A one-sided exact binomial test (scipy) of ``flagged`` of ``n`` against ``share``:
    returns whether its p-value is below ``alpha``, and the p-value.
    """
    from scipy.stats import binomtest

    if n <= 0:
        raise ValueError("an empty window has no flagged share to test")
    p = float(binomtest(int(flagged), int(n), share, alternative="greater").pvalue)
    return p < alpha, p


def critical_count(n: int, share: float, alpha: float) -> int:
    """The fewest flagged drawings of ``n`` that :func:`window_test` calls drift."""
    from scipy.stats import binom

    # P(X >= k) = sf(k - 1) < alpha: the smallest such k, from the inverse survival function.
    k = int(binom.isf(alpha, n, share)) + 1
    while k > 0 and binom.sf(k - 2, n, share) < alpha:  # isf is exact only up to rounding
        k -= 1
    while binom.sf(k - 1, n, share) >= alpha:
        k += 1
    return k


def logged_source(
    name: str, images: np.ndarray, labels: np.ndarray, limit: int | None = None, seed: int = 0
) -> Source:
    """MNIST-style digits as the service would log them (:func:`model.preprocess.to_mnist`),
    at most ``limit`` of them drawn at random with ``seed``; empty ones dropped."""
    from model.preprocess import preprocess_batch

    rows = np.arange(len(images))
    if limit is not None and len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=limit, replace=False))
    x, accepted = preprocess_batch(images[rows])
    return Source(name, x[accepted], np.asarray(labels)[rows][accepted])


def fit_for_version(
    net: nn.Module,
    mnist_train: tuple[np.ndarray, np.ndarray],
    mnist_test: tuple[np.ndarray, np.ndarray],
    share: float,
    traffic: Sequence[Source] = (),
    traffic_held_out: Sequence[Source] = (),
    fit_size: int = FIT_SIZE,
    seed: int = 0,
) -> NoveltyScorer:
    """The scorer a version is registered with: fitted on ``fit_size`` of the MNIST digits
    it trained on and on the logged ``traffic`` it was fine-tuned on (people's labels and
    pseudo-labels: one source, its own ten components), calibrated on MNIST test and the
    held-out traffic. MNIST is passed through the service's preprocessing first."""
    train = [logged_source("mnist", *mnist_train, limit=fit_size, seed=seed), *traffic]
    held_out = [logged_source("mnist", *mnist_test), *traffic_held_out]
    return fit_novelty(net, train, held_out, share, max_per_source=fit_size, seed=seed)

"""The novelty window test: more unusual drawings in a window than the champion's calibrated
share allows.

Evidently's column tests compare a window's distributions, so they need much of a window to
move; a minority of users drawing differently moves few columns. Each answer's novelty
score (:mod:`model.novelty`) flags a drawing unlike the champion's own training data, and
the threshold flags a known share of held-out in-distribution drawings: a one-sided exact
binomial test (scipy) of the window's flagged count against that share is the window test.
It sits beside Evidently's tests; the drift step's verdict is either of them.

The scores come from the predictions log where the champion answered (the service scores
every answer as it predicts) and are computed here for the other rows (answers of an older
version, or logged before the column existed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from model.novelty import NoveltyScorer, critical_count, window_test


@dataclass(frozen=True)
class NoveltyWindow:
    """One window's flagged count and the binomial test of it."""

    detected: bool
    flagged: int
    n: int
    share: float  # the champion's calibrated share: the test's null
    critical: int  # the fewest flagged drawings of n the test calls drift
    p_value: float
    alpha: float
    threshold: float
    from_log: int  # scores read from the predictions log (the rest computed here)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def window_scores(
    frame: pd.DataFrame, embeddings: np.ndarray, scorer: NoveltyScorer, version: str
) -> tuple[np.ndarray, int]:
    """Novelty (N,) of a window's answers under the champion ``version``, and how many came
    from the log: its own logged scores, the rest scored here from ``embeddings`` (N, D),
    the champion's embeddings of the window's drawings (the drift step's forward pass)."""
    scores = np.full(len(frame), np.nan, np.float32)
    if "novelty" in frame.columns:
        logged = frame["novelty"].to_numpy(dtype=np.float64, na_value=np.nan)
        mine = (frame["model_version"].astype(str) == str(version)).to_numpy() & ~np.isnan(logged)
        scores[mine] = logged[mine]
    missing = np.isnan(scores)
    if missing.any():
        scores[missing] = scorer.score(embeddings[missing])
    return scores, int((~missing).sum())


class Thresholded(Protocol):
    """A per-drawing scorer with a calibrated threshold: :class:`model.novelty.NoveltyScorer`
    on embeddings, :class:`pipelines.drift.geometry.GeometryScorer` on the pixels."""

    threshold: float
    share: float

    def flagged(self, scores: np.ndarray) -> np.ndarray: ...


def judge_window(
    scores: np.ndarray, scorer: Thresholded, alpha: float, from_log: int = 0
) -> NoveltyWindow:
    """The binomial test of a window's per-drawing scores against the scorer's share."""
    flagged = int(scorer.flagged(scores).sum())
    detected, p_value = window_test(flagged, len(scores), scorer.share, alpha)
    return NoveltyWindow(
        detected=detected,
        flagged=flagged,
        n=len(scores),
        share=scorer.share,
        critical=critical_count(len(scores), scorer.share, alpha),
        p_value=p_value,
        alpha=alpha,
        threshold=scorer.threshold,
        from_log=from_log,
    )


# A cluster needs a few drawings to say what a group looks like; more groups than this are
# more than a person reads in a report.
MIN_PER_CLUSTER = 4
MAX_CLUSTERS = 4


@dataclass(frozen=True)
class Cluster:
    """A group of a window's flagged drawings that look alike to the champion."""

    size: int
    members: tuple[int, ...]  # rows of the flagged drawings, most unusual first
    mean_novelty: float
    answered: dict[int, int]  # how often it answered each digit

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def cluster_flagged(
    embeddings: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    max_clusters: int = MAX_CLUSTERS,
    seed: int = 0,
) -> list[Cluster]:
    """Group flagged drawings by their embeddings (scikit-learn's KMeans), largest first.

    The number of groups, from 1 to ``max_clusters`` with at least ``MIN_PER_CLUSTER``
    drawings each, is the one with the best silhouette; with fewer than two groups' worth
    of drawings they are one group.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    n = len(embeddings)
    if n == 0:
        return []
    assignment = np.zeros(n, np.int64)
    best = -1.0
    for k in range(2, min(max_clusters, n // MIN_PER_CLUSTER) + 1):
        fitted = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(embeddings)
        quality = float(silhouette_score(embeddings, fitted.labels_))
        if quality > best:
            best, assignment = quality, fitted.labels_
    clusters = []
    for group in np.unique(assignment):
        rows = np.flatnonzero(assignment == group)
        rows = rows[np.argsort(-scores[rows], kind="stable")]
        digits, counts = np.unique(labels[rows], return_counts=True)
        clusters.append(
            Cluster(
                size=len(rows),
                members=tuple(int(r) for r in rows),
                mean_novelty=float(scores[rows].mean()),
                answered={int(d): int(c) for d, c in zip(digits, counts, strict=True)},
            )
        )
    return sorted(clusters, key=lambda c: -c.size)


def clusters_png(images: np.ndarray, clusters: list[Cluster], examples: int = 12) -> bytes:
    """One row per cluster of up to ``examples`` of its drawings (most unusual first)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(len(clusters), 1)
    fig, axes = plt.subplots(
        rows, examples, figsize=(examples * 0.8, rows * 1.0 + 0.4), dpi=100, squeeze=False
    )
    for axis in axes.ravel():
        axis.axis("off")
    for row, cluster in enumerate(clusters):
        for column, member in enumerate(cluster.members[:examples]):
            axes[row, column].imshow(images[member], cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_title(
            f"group {row + 1}: {cluster.size} drawings, answered "
            + ", ".join(f"{d} x{c}" for d, c in sorted(cluster.answered.items())),
            loc="left",
            fontsize=8,
        )
    # Not tight_layout: each row's title runs across the row's images, wider than one axis.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.9, hspace=0.5, wspace=0.05)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()

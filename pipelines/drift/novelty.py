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

import numpy as np
import pandas as pd
from torch import nn

from model.novelty import NoveltyScorer, critical_count, embeddings_of, window_test


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
    frame: pd.DataFrame, images: np.ndarray, net: nn.Module, scorer: NoveltyScorer, version: str
) -> tuple[np.ndarray, int]:
    """Novelty (N,) of a window's answers under the champion ``version``, and how many came
    from the log: its own logged scores, the rest scored here (one forward pass of them)."""
    scores = np.full(len(frame), np.nan, np.float32)
    if "novelty" in frame.columns:
        logged = frame["novelty"].to_numpy(dtype=np.float64, na_value=np.nan)
        mine = (frame["model_version"].astype(str) == str(version)).to_numpy() & ~np.isnan(logged)
        scores[mine] = logged[mine]
    missing = np.isnan(scores)
    if missing.any():
        scores[missing] = scorer.score(embeddings_of(net, images[missing]))
    return scores, int((~missing).sum())


def judge_window(
    scores: np.ndarray, scorer: NoveltyScorer, alpha: float, from_log: int = 0
) -> NoveltyWindow:
    """The binomial test of a window's novelty scores against the scorer's share."""
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

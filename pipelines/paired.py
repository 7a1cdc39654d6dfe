"""Paired, sequential evidence on a challenger: which of two models is right more often.

Both models are scored on the same labelled, logged images. Only *discordant* images tell
them apart (one model right, the other wrong); the unknown is their ratio

    psi = (images only the challenger gets right) / (images only the champion gets right),

so psi > 1 means the challenger is better, psi < 1 worse, whatever share of images both get
right or both get wrong.

**Which images get labels is not random.** People label some answers and not others, and
many only correct wrong answers. An image is labelled depending on the answer it was
*served* (right or wrong), and it was served by the canary or by stable at random (the
traffic split). Conditioned on that, the track that served a discordant image says which
model was right, with a probability that depends on psi and the canary's share ``w`` only:

- a *correction* (the served answer was wrong) favours the challenger when stable served
  it, with probability ``(1-w) psi / ((1-w) psi + w)``;
- a *confirmation* (the served answer was right) favours the challenger when the canary
  served it, with probability ``w psi / (w psi + 1 - w)``.

How often people confirm or correct cancels out, so the test holds for people who label
every answer, one in five, or only the wrong ones (``digitloop loop calibrate`` measures
it). Images served while no canary ran carry no information under this model (``w`` is 0):
with selective labels there is nothing unbiased to learn from them.

**Every loop run looks again**, so the decision uses e-values of a mixture sequential
probability ratio test (mSPRT): the likelihood ratio against psi = 1, averaged over a prior
on psi. It is a non-negative supermartingale under the null, so by Ville's inequality the
chance it ever exceeds ``1/alpha``, at any of the runs that look, is at most ``alpha``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp, xlogy

# The prior on log(psi) of each one-sided alternative: uniform over ratios from 1.1 to 30,
# on a grid fine enough that the mixture is smooth (a log-uniform prior weighs "a bit
# better" and "much better" alike).
_GRID = np.linspace(np.log(1.1), np.log(30.0), 48)


@dataclass(frozen=True)
class PairedCounts:
    """Discordant labelled images, by how their label was observed.

    Attributes:
        stable_wrong_challenger_right: stable served a wrong answer, it was corrected, and
            the challenger gets the image right.
        canary_wrong_champion_right: the canary's wrong answer was corrected; the champion
            gets it right.
        canary_right_champion_wrong: the canary's answer was confirmed; the champion gets
            it wrong.
        stable_right_challenger_wrong: stable's answer was confirmed; the challenger gets
            it wrong.
        canary_share: the share of answers the canary served over the same period.
    """

    stable_wrong_challenger_right: int = 0
    canary_wrong_champion_right: int = 0
    canary_right_champion_wrong: int = 0
    stable_right_challenger_wrong: int = 0
    canary_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.canary_share <= 1.0:
            raise ValueError(f"canary_share must be within [0, 1], got {self.canary_share}")
        if any(n < 0 for n in self._counts()):
            raise ValueError("counts must not be negative")

    def _counts(self) -> tuple[int, int, int, int]:
        return (
            self.stable_wrong_challenger_right,
            self.canary_wrong_champion_right,
            self.canary_right_champion_wrong,
            self.stable_right_challenger_wrong,
        )

    @property
    def for_challenger(self) -> int:
        return self.stable_wrong_challenger_right + self.canary_right_champion_wrong

    @property
    def for_champion(self) -> int:
        return self.canary_wrong_champion_right + self.stable_right_challenger_wrong

    @property
    def discordant(self) -> int:
        return self.for_challenger + self.for_champion

    def __add__(self, other: PairedCounts) -> PairedCounts:
        """Counts of two periods with the same split (the calibration's runs add up)."""
        a, b = self._counts(), other._counts()
        return PairedCounts(*(x + y for x, y in zip(a, b, strict=True)), self.canary_share)


def log_likelihood_ratio(counts: PairedCounts, log_psi: np.ndarray) -> np.ndarray:
    """log L(psi) - log L(1) of the counts, for each value of ``log_psi``."""
    w = counts.canary_share
    psi = np.exp(np.asarray(log_psi, dtype=float))
    total = np.zeros_like(psi)
    # Each stratum is a Bernoulli "favours the challenger" with P(psi) = a psi / (a psi + b).
    # A split of 0 or 100 % makes it certain whatever psi is: no information (ratio 1).
    for favour, against, a, b in (
        (counts.stable_wrong_challenger_right, counts.canary_wrong_champion_right, 1 - w, w),
        (counts.canary_right_champion_wrong, counts.stable_right_challenger_wrong, w, 1 - w),
    ):
        if a == 0 or b == 0 or favour + against == 0:
            continue
        p = a * psi / (a * psi + b)
        p0 = a / (a + b)
        total += xlogy(favour, p / p0) + xlogy(against, (1 - p) / (1 - p0))
    return total


@dataclass(frozen=True)
class EValues:
    """Evidence against "the challenger is not better" and against "it is not worse"."""

    better: float
    worse: float
    psi_hat: float | None  # the ratio's maximum-likelihood estimate; None with no evidence


def e_values(counts: PairedCounts) -> EValues:
    """The mixture-SPRT e-values of both one-sided tests on ``counts``.

    ``better`` averages the likelihood ratio over psi > 1 (the prior is :data:`_GRID`),
    ``worse`` over psi < 1 (the mirrored grid). Both are valid at every look: under the
    null each is a supermartingale with mean at most 1.
    """
    better = float(np.exp(logsumexp(log_likelihood_ratio(counts, _GRID)) - np.log(_GRID.size)))
    worse = float(np.exp(logsumexp(log_likelihood_ratio(counts, -_GRID)) - np.log(_GRID.size)))
    return EValues(better=better, worse=worse, psi_hat=_psi_hat(counts))


def _psi_hat(counts: PairedCounts) -> float | None:
    if counts.discordant == 0 or counts.canary_share in (0.0, 1.0):
        return None
    grid = np.linspace(np.log(1 / 100), np.log(100), 185)  # steps of 5 %
    return float(np.exp(grid[np.argmax(log_likelihood_ratio(counts, grid))]))


def count_pairs(
    served_by_canary: np.ndarray,
    served_right: np.ndarray,
    champion_right: np.ndarray,
    challenger_right: np.ndarray,
    canary_share: float,
) -> PairedCounts:
    """Sort labelled images into :class:`PairedCounts`; one boolean array entry per image.

    ``served_right`` is whether the answer people saw was right (they confirmed it), which
    decides the stratum; the two models' own answers decide which one the image favours.
    """
    canary = np.asarray(served_by_canary, bool)
    served = np.asarray(served_right, bool)
    champion = np.asarray(champion_right, bool)
    challenger = np.asarray(challenger_right, bool)
    only_challenger = challenger & ~champion
    only_champion = champion & ~challenger
    return PairedCounts(
        stable_wrong_challenger_right=int((~canary & ~served & only_challenger).sum()),
        canary_wrong_champion_right=int((canary & ~served & only_champion).sum()),
        canary_right_champion_wrong=int((canary & served & only_challenger).sum()),
        stable_right_challenger_wrong=int((~canary & served & only_champion).sum()),
        canary_share=canary_share,
    )

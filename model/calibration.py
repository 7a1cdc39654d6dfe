"""Calibrated probabilities and an accuracy estimate that needs no labels.

Temperature scaling (Guo et al., 2017) divides the logits by one number T fitted on
held-out data, minimising the negative log-likelihood: T > 1 softens an over-confident
network, T < 1 sharpens an under-confident one (label smoothing trains a network to be
under-confident). Dividing by T never changes the argmax, so accuracy is untouched.

With calibrated probabilities the mean top probability is an estimate of accuracy on any
population the calibration still holds for: NannyML's confidence-based performance
estimation (CBPE). It holds under covariate shift only as far as the network's
confidence follows its errors there: check it against the labels that do come in.

Measured (issue 14, item 6; an 8-epoch champion, T fitted on MNIST test): T = 0.47; ECE on
MNIST test 0.045 raw, 0.0015 calibrated (fitted on one half, measured on the other).
Estimated vs real accuracy: seven-segment digits 92.9 % vs 93.0 % (77.5 % raw), typeset
digits 99.5 % vs 98.7 %; fine-tuned on 100 seven-segment digits, typeset 99.7 % vs 98.0 %.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# The fitted temperature is clamped to this range: data the network gets all right has its
# likelihood still rising as T -> 0, and a temperature of 0 or infinity serves nothing.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
_BISECTION_STEPS = 60  # log(MAX/MIN) / 2**60: far below any difference that matters


def as_logits(scores: np.ndarray) -> np.ndarray:
    """Logits (N, K) float64 from probabilities or logits.

    Rows that are non-negative and sum to 1 are taken as probabilities and turned into
    log-probabilities, which softmax treats as logits (it ignores a per-row constant).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, classes), got shape {scores.shape}")
    if _are_probabilities(scores):
        return np.log(np.clip(scores, np.finfo(np.float32).tiny, None))
    return scores


def _are_probabilities(scores: np.ndarray) -> bool:
    return bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))


def as_probabilities(scores: np.ndarray) -> np.ndarray:
    """Probabilities (N, K) from probabilities (returned as they are) or logits."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores if _are_probabilities(scores) else softmax(scores)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(scores: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T that minimises the NLL of ``softmax(logits / T)`` on ``labels``.

    ``scores`` are probabilities or logits (N, K). The NLL is convex in 1/T and its
    derivative rises with 1/T, so a bisection on that derivative finds the optimum within
    [MIN_TEMPERATURE, MAX_TEMPERATURE].
    """
    logits = as_logits(scores)
    labels = np.asarray(labels, dtype=np.int64)
    if len(logits) != len(labels):
        raise ValueError(f"{len(logits)} rows of scores but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no samples to fit a temperature on")
    logits = logits - logits.max(axis=1, keepdims=True)
    true_logit = logits[np.arange(len(labels)), labels]

    def slope(inverse_t: float) -> float:
        """d NLL / d(1/T): the expected logit under the model minus the true one."""
        p = softmax(inverse_t * logits)
        return float(np.mean((p * logits).sum(axis=1) - true_logit))

    low, high = np.log(1.0 / MAX_TEMPERATURE), np.log(1.0 / MIN_TEMPERATURE)
    if slope(np.exp(high)) <= 0:
        return MIN_TEMPERATURE
    if slope(np.exp(low)) >= 0:
        return MAX_TEMPERATURE
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if slope(np.exp(middle)) > 0:
            high = middle
        else:
            low = middle
    return float(1.0 / np.exp((low + high) / 2))


def apply_temperature(scores: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities ``softmax(logits / T)`` (N, K) float32 from probabilities or logits."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return softmax(as_logits(scores) / temperature).astype(np.float32)


# Top probabilities are summed exactly, as whole numbers of 2**-TOP_SUM_BITS (every float64,
# subnormals included, is one): a sum kept in parts, as the loop's running totals keep it
# (pipelines/steps/totals.py), is then the same number as one over all rows at once, and
# so is the mean taken from it, whatever the order or grouping of the rows.
TOP_SUM_BITS = 1126
_HALF = 26  # a 53-bit mantissa in two halves, each summed in int64 without overflow


def top_probability_sum(probabilities: np.ndarray) -> int:
    """The exact sum of each row's top probability, in units of ``2**-TOP_SUM_BITS``."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(f"need (N, classes) probabilities, got shape {probabilities.shape}")
    if len(probabilities) == 0:
        return 0
    top = probabilities.max(axis=1)
    if not np.all(np.isfinite(top)):
        raise ValueError("probabilities must be finite")
    mantissa, exponent = np.frexp(top)  # top = mantissa * 2**exponent, 0.5 <= |mantissa| < 1
    whole = (mantissa * 2.0**53).astype(np.int64)  # exact: a float64 mantissa has 53 bits
    total = 0
    for e in np.unique(exponent):
        part = whole[exponent == e]
        high, low = int((part >> _HALF).sum()), int((part & ((1 << _HALF) - 1)).sum())
        total += ((high << _HALF) + low) << int(e - 53 + TOP_SUM_BITS)
    return total


def mean_top_probability(total: int, n: int) -> float:
    """The mean from a :func:`top_probability_sum` over ``n`` rows, correctly rounded."""
    if n <= 0:
        raise ValueError(f"need at least one row, got {n}")
    return total / (n << TOP_SUM_BITS)  # int / int rounds correctly in Python


def expected_accuracy(probabilities: np.ndarray) -> float:
    """CBPE's accuracy estimate: the mean top probability of calibrated probabilities
    (summed exactly, see :func:`top_probability_sum`)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or len(probabilities) == 0:
        raise ValueError(f"need (N, classes) probabilities, got shape {probabilities.shape}")
    return mean_top_probability(top_probability_sum(probabilities), len(probabilities))


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width bins of the
    top probability and weighted by how many answers fall in each bin."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(probabilities) != len(labels) or len(labels) == 0:
        raise ValueError(f"{len(probabilities)} rows of probabilities, {len(labels)} labels")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 joins bin 0.
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    gap = np.bincount(which, weights=confidence - correct, minlength=bins)
    return float(np.abs(gap).sum() / len(labels))


@dataclass(frozen=True)
class Calibration:
    """A temperature fitted on held-out labelled data, and what it did there."""

    temperature: float
    ece: float  # of the probabilities as the network gives them
    ece_calibrated: float  # after the temperature (on the same data it was fitted on)
    expected_accuracy: float  # CBPE's estimate from the calibrated probabilities

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def calibrate(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> Calibration:
    """Fit a temperature on ``probabilities`` (or logits) and ``labels``, and measure it."""
    temperature = fit_temperature(probabilities, labels)
    calibrated = apply_temperature(probabilities, temperature)
    return Calibration(
        temperature=temperature,
        ece=expected_calibration_error(as_probabilities(probabilities), labels, bins),
        ece_calibrated=expected_calibration_error(calibrated, labels, bins),
        expected_accuracy=expected_accuracy(calibrated),
    )

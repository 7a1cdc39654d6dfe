"""Accuracy, per-class accuracy, calibration and a confusion matrix figure for a network.

:func:`evaluate` on MNIST test is what every registration passes to
:class:`model.registry.TrainingRecord`, so the temperature each version serves with is
fitted there: on held-out, in-distribution data the network never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from torch import nn

from contracts.api import DIGITS
from model.calibration import Calibration, calibrate
from model.network import predict_proba


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    n: int
    per_class: dict[str, float]
    confusion: np.ndarray  # (10, 10): rows true label, columns predicted
    # Fitted on these samples when the network's probabilities were at hand (evaluate).
    calibration: Calibration | None = None

    def as_dict(self) -> dict[str, object]:
        """The JSON form ``digitloop evaluate --json`` prints."""
        calibration = self.calibration.as_dict() if self.calibration else {}
        return {"accuracy": self.accuracy, "n": self.n, "per_class": self.per_class, **calibration}


def score(y_true: np.ndarray, y_pred: np.ndarray) -> Evaluation:
    """Accuracy, per-class accuracy (recall) and confusion matrix of predicted labels."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    confusion = np.zeros((DIGITS, DIGITS), dtype=np.int64)
    valid = (y_pred >= 0) & (y_pred < DIGITS)  # -1 marks an input with no prediction
    np.add.at(confusion, (y_true[valid], y_pred[valid]), 1)
    support = np.bincount(y_true, minlength=DIGITS)
    per_class = {str(c): float(confusion[c, c] / support[c]) for c in range(DIGITS) if support[c]}
    n = len(y_true)
    accuracy = float(np.trace(confusion) / n) if n else 0.0
    return Evaluation(accuracy=accuracy, n=n, per_class=per_class, confusion=confusion)


def evaluate(net: nn.Module, x: np.ndarray, y: np.ndarray) -> Evaluation:
    """Evaluate ``net`` on (N, 28, 28) uint8 images ``x`` with labels ``y``, and fit the
    temperature that calibrates its probabilities on them."""
    probabilities = predict_proba(net, x)
    scored = score(y, probabilities.argmax(axis=1))
    if not len(y):
        return scored
    return replace(scored, calibration=calibrate(probabilities, y))


def plot_confusion(confusion: np.ndarray, path: Path, title: str = "Confusion matrix") -> Path:
    """Write the confusion matrix as a PNG (counts in each cell, rows = true label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    # Log colour scale: the diagonal would otherwise wash out the few errors that matter.
    shown = ax.imshow(np.log1p(confusion), cmap="Blues")
    ax.set(
        xticks=range(DIGITS),
        yticks=range(DIGITS),
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    threshold = np.log1p(confusion).max() / 2
    for i in range(DIGITS):
        for j in range(DIGITS):
            if confusion[i, j]:
                ax.text(
                    j,
                    i,
                    str(confusion[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if np.log1p(confusion[i, j]) > threshold else "black",
                )
    fig.colorbar(shown, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

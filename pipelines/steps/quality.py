"""Quality: how the answers fared, overall, per model version and track, per digit.

People label a minority of answers, and many only correct wrong ones, so three figures
are kept apart: the accuracy over labelled answers, the corrected share of all answers
(a floor on the error rate, however people label), and a label-free estimate from the
model's calibrated probabilities (:func:`model.calibration.expected_accuracy`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from model.calibration import expected_accuracy
from pipelines.outputs import AnswerQuality, CollectOutput, LiveAccuracy, QualityOutput
from pipelines.steps.context import LoopContext


def answer_quality(answers: pd.DataFrame, labelled: pd.DataFrame) -> AnswerQuality:
    """The quality of ``answers`` (logged predictions), given the ``labelled`` ones among them."""
    right = labelled["label"] == labelled["true_label"]
    probabilities = (
        np.stack(answers["probabilities"].to_numpy()) if len(answers) else np.zeros((0, 10))
    )
    return AnswerQuality(
        answers=len(answers),
        confirmed=int(right.sum()),
        corrected=int((~right).sum()),
        estimated_accuracy=expected_accuracy(probabilities) if len(answers) else None,
    )


def quality(predictions: pd.DataFrame, labelled: pd.DataFrame, champion: str) -> QualityOutput:
    """Quality of a window: ``predictions`` are its answers, ``labelled`` its labelled answers
    (``label`` as answered, ``true_label`` as people said); ``champion`` is the stable
    version, whose own answers alone are broken down by digit."""
    predictions = _keyed(predictions)
    # Feedback of the window may label an older answer: it counts where its answer does.
    labelled = _keyed(labelled[labelled["prediction_id"].isin(predictions["prediction_id"])])

    def grouped(key: str, answers: pd.DataFrame = predictions) -> dict:
        return {
            value: answer_quality(
                group, labelled[labelled["prediction_id"].isin(group["prediction_id"])]
            )
            for value, group in answers.groupby(key, sort=True)
        }

    by_class = {
        int(digit): LiveAccuracy(n=len(group), correct=int((group["label"] == digit).sum()))
        for digit, group in labelled.groupby("true_label", sort=True)
    }
    return QualityOutput(
        overall=answer_quality(predictions, labelled),
        by_track=grouped("served_by"),
        by_answer={
            int(k): v
            for k, v in grouped(
                "label", predictions[predictions["served_by"] == f"stable:v{champion}"]
            ).items()
        },
        by_class=by_class,
    )


def _keyed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ``served_by`` = ``<track>:v<version>`` and integer labels."""
    frame = frame.copy()
    frame["served_by"] = frame["track"].astype(str) + ":v" + frame["model_version"].astype(str)
    frame["label"] = frame["label"].astype(int)
    return frame


def step_quality(ctx: LoopContext, collect: CollectOutput) -> QualityOutput:
    """Labelled accuracy, corrected share and label-free estimate, per track and digit."""
    window = ctx.window(collect.since, collect.until)
    return quality(window.predictions, window.labelled, collect.stable_version)

"""When the sketchpad asks a person to check an answer: when the model is unsure of it, or
the drawing is unusual to it.

People label few answers unasked, and many only correct wrong ones; an answer the model is
unsure of is where a label teaches most. A drawing unlike the model's training data
(``Prediction.unusual``, :mod:`model.novelty`) is the other: a new way of writing a digit
that the model may answer confidently and wrongly, and whose labels the loop needs to learn
it. Pure and free of Gradio: the simulator imports it to ask its simulated people the same
way.
"""

from __future__ import annotations

from contracts.api import Prediction

# The source of feedback given while the prompt was on screen, so the loop can count asked
# labels apart from the ones people give unasked.
ASKED_SOURCE = "sketchpad-asked"


def should_ask(prediction: Prediction, threshold: float) -> bool:
    """Whether the answer's top probability is below ``threshold``, or the drawing was
    flagged unusual by the version that answered.

    0 (or less) never asks, not even about unusual drawings; a threshold above 1 asks about
    every answer.
    """
    if threshold <= 0:
        return False
    return prediction.unusual or prediction.confidence < threshold


def ask_text(prediction: Prediction) -> str:
    """The question, in plain words; the confirm and digit buttons answer it."""
    if prediction.unusual:
        return (
            f"This one looks unlike the digits I learnt from. Is it a {prediction.label}? "
            "Press ✓ if it is, or pick the right digit."
        )
    return (
        f"I'm not sure about this one. Is it a {prediction.label}? "
        "Press ✓ if it is, or pick the right digit."
    )

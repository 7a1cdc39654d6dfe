"""When the sketchpad asks a person to check an answer: when the model is unsure of it.

People label few answers unasked, and many only correct wrong ones; an answer the model is
unsure of is where a label teaches most. Pure and free of Gradio: the simulator imports it
to ask its simulated people the same way.
"""

from __future__ import annotations

from contracts.api import Prediction

# The source of feedback given while the prompt was on screen, so the loop can count asked
# labels apart from the ones people give unasked.
ASKED_SOURCE = "sketchpad-asked"


def should_ask(prediction: Prediction, threshold: float) -> bool:
    """Whether the answer's top probability is below ``threshold``.

    0 never asks; a threshold above 1 asks about every answer.
    """
    return prediction.confidence < threshold


def ask_text(prediction: Prediction) -> str:
    """The question, in plain words; the confirm and digit buttons answer it."""
    return (
        f"I'm not sure about this one. Is it a {prediction.label}? "
        "Press ✓ if it is, or pick the right digit."
    )

"""The label-efficiency bench's pure parts: people label as the simulator's do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from digitloop_bench.few_labels import as_logged, few_labels, user_labels
from digitloop_bench.simulator.population import SimConfig

from model.network import DigitNet
from pipelines.steps.retrain import PseudoLabels, pseudo_label_rows
from pipelines.steps.window import stack_images
from tests.conftest import MNIST_PATH

SURE, UNSURE = 0.999, 0.5


def probabilities(answers: list[int], confidence: list[float]) -> np.ndarray:
    rows = np.full((len(answers), 10), 0.0, np.float32)
    for row, (answer, top) in enumerate(zip(answers, confidence, strict=True)):
        rows[row] = (1 - top) / 9
        rows[row, answer] = top
    return rows


@pytest.mark.parametrize(
    ("feedback", "keep", "expected"),
    [
        # sure+right, sure+wrong, unsure+right (asked), unsure+wrong (asked)
        ("correct-only", 10, [False, True, True, True]),
        ("both", 10, [True, True, True, True]),
        ("correct-only", 2, [False, True, True, False]),  # only the first two labels
    ],
)
def test_people_label_as_the_simulators_do(feedback, keep, expected):
    answers = np.array([1, 1, 2, 2])
    truth = np.array([1, 7, 2, 5])
    probs = probabilities(answers.tolist(), [SURE, SURE, UNSURE, UNSURE])
    config = SimConfig(feedback=feedback, label_prob=1.0, answer_when_asked=1.0, ask_below=0.8)
    labelled = user_labels(answers, truth, probs, config, np.random.default_rng(0), keep)
    assert labelled.tolist() == expected


def test_the_bench_takes_pseudo_labels_by_the_retrain_steps_rule():
    images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    logged = as_logged(images, probabilities([4, 4, 6], [SURE, UNSURE, SURE]))
    rows = pseudo_label_rows(logged, logged.iloc[[2]], "1", 0.99)
    pseudo = PseudoLabels.of(rows, stack_images(rows))
    assert pseudo.prediction_ids == ("p0",) and pseudo.y.tolist() == [4]
    assert (pseudo.x[0] == images[0]).all()


def test_the_bench_runs_end_to_end(tmp_path, capsys):
    """One tiny run through the command: a row per run with both fine-tunes scored."""
    torch.save(DigitNet().state_dict(), tmp_path / "net.pt")
    few_labels(
        model_file=tmp_path / "net.pt",
        labels=[4],
        runs=1,
        window=60,
        test=200,
        mnist_limit=300,
        threads=1,
        mnist=MNIST_PATH,
        as_json=True,
    )
    summary = json.loads(capsys.readouterr().out)
    (row,) = summary["rows"]
    assert row["labels"] == 4 and row["pseudo_labelled"] == 0  # untrained: sure of nothing
    for scores in (row["labels_only"], row["with_pseudo"]):
        assert 0 <= scores["style"] <= 1 and 0 <= scores["mnist"] <= 1

"""Temperature scaling, ECE and the label-free accuracy estimate (model/calibration.py)."""

from __future__ import annotations

import numpy as np
import pytest

from model.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    apply_temperature,
    calibrate,
    expected_accuracy,
    expected_calibration_error,
    fit_temperature,
    softmax,
)
from model.evaluate import evaluate
from model.network import DigitNet, predict_proba
from model.registry import ModelVersionInfo


def calibrated_sample(n: int, seed: int, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 10)) * scale
    p = softmax(logits)
    labels = (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).clip(0, 9)
    return logits, labels


def test_an_over_confident_network_gets_a_temperature_above_1_and_a_lower_ece():
    logits, labels = calibrated_sample(20_000, seed=1)
    over_confident = softmax(2.5 * logits)  # logits 2.5x too large
    temperature = fit_temperature(over_confident, labels)
    assert temperature == pytest.approx(2.5, rel=0.05)
    before = expected_calibration_error(over_confident, labels)
    after = expected_calibration_error(apply_temperature(over_confident, temperature), labels)
    assert before > 0.1 and after < 0.02


def test_an_under_confident_network_gets_a_temperature_below_1():
    logits, labels = calibrated_sample(20_000, seed=2)
    assert fit_temperature(logits / 2, labels) == pytest.approx(0.5, rel=0.05)


def test_logits_and_their_probabilities_fit_the_same_temperature():
    logits, labels = calibrated_sample(5_000, seed=3)
    assert fit_temperature(3 * logits, labels) == pytest.approx(
        fit_temperature(softmax(3 * logits).astype(np.float32), labels), rel=1e-3
    )


def test_the_temperature_stays_in_its_range():
    logits, _ = calibrated_sample(1_000, seed=4)
    # Every answer right: sharper is always likelier. Every label the least likely class:
    # flatter is always likelier.
    assert fit_temperature(logits, logits.argmax(axis=1)) == MIN_TEMPERATURE
    assert fit_temperature(logits, logits.argmin(axis=1)) == MAX_TEMPERATURE


def test_temperature_keeps_the_answer_and_1_changes_nothing():
    logits, _ = calibrated_sample(500, seed=5)
    p = softmax(logits)
    for temperature in (0.3, 1.0, 4.0):
        calibrated = apply_temperature(p, temperature)
        np.testing.assert_array_equal(calibrated.argmax(axis=1), p.argmax(axis=1))
        np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, atol=1e-6)
    np.testing.assert_allclose(apply_temperature(logits, 2.0), softmax(logits / 2), atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(p, 0.0)


def test_expected_accuracy_of_calibrated_probabilities_is_the_accuracy():
    """CBPE by simulation: for calibrated probabilities, the mean top probability is within
    four standard errors (sqrt(a(1-a)/n) is about 0.0033 here) of the true accuracy."""
    for seed in range(5):
        logits, labels = calibrated_sample(20_000, seed=10 + seed, scale=1.5 + seed)
        p = softmax(logits)
        true_accuracy = float(np.mean(p.argmax(axis=1) == labels))
        assert expected_accuracy(p) == pytest.approx(true_accuracy, abs=0.015)
    # ...and not for over-confident ones: the estimate is only as good as the calibration.
    logits, labels = calibrated_sample(20_000, seed=20)
    true_accuracy = float(np.mean(logits.argmax(axis=1) == labels))
    assert expected_accuracy(softmax(3 * logits)) > true_accuracy + 0.1


def test_ece_by_hand():
    # Two bins used: (0.6, 0.667] holds 0.62 and 0.65, both right: gap 1 - 0.635;
    # (0.933, 1] holds 0.95 and 0.99, one right: gap 0.97 - 0.5. Weighted 2/4 each.
    top = np.array([0.62, 0.65, 0.95, 0.99])
    probabilities = np.zeros((4, 10))
    probabilities[:, 0] = top
    probabilities[:, 1] = 1 - top
    labels = np.array([0, 0, 0, 1])
    expected = 0.5 * (1 - 0.635) + 0.5 * (0.97 - 0.5)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(expected)
    assert expected_calibration_error(probabilities, np.zeros(4, int), bins=1) == pytest.approx(
        1 - top.mean()
    )


def test_calibrate_reports_the_fit_and_its_effect():
    logits, labels = calibrated_sample(10_000, seed=30)
    calibration = calibrate(softmax(2 * logits), labels)
    assert calibration.temperature == pytest.approx(2.0, rel=0.05)
    assert calibration.ece_calibrated < calibration.ece
    assert calibration.expected_accuracy == pytest.approx(
        float(np.mean(logits.argmax(axis=1) == labels)), abs=0.02
    )


def test_evaluate_fits_the_temperature_on_what_it_evaluates(mnist):
    net = DigitNet().eval()
    x, y = mnist.x_test[:300], mnist.y_test[:300]
    evaluation = evaluate(net, x, y)
    assert evaluation.calibration is not None
    assert evaluation.calibration.temperature == pytest.approx(
        fit_temperature(predict_proba(net, x), y)
    )
    assert evaluation.as_dict()["temperature"] == evaluation.calibration.temperature
    assert evaluate(net, x[:0], y[:0]).calibration is None


def test_a_version_s_temperature_comes_from_its_tag():
    def version(tags: dict[str, str]) -> ModelVersionInfo:
        return ModelVersionInfo("digitloop-mnist", "3", [], tags, "run")

    assert version({"temperature": "0.731200"}).temperature == pytest.approx(0.7312)
    assert version({}).temperature == 1.0  # registered before calibration

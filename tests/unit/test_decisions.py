"""Table-driven tests of the loop's decisions: decide, gate, analyse, at their boundaries."""

from __future__ import annotations

import pytest

from pipelines.decisions import ServingHealth, Tally, analyse, decide, gate
from pipelines.settings import DecisionSettings

S = DecisionSettings(
    min_new_labels=200,
    accuracy_threshold=0.95,
    class_error_threshold=0.2,
    min_class_samples=10,
    max_mnist_regression=0.005,
    min_holdout_gain=0.0,
    canary_min_samples=200,
    canary_max_samples=2000,
    non_inferiority_margin=0.02,
    alpha=0.05,
    max_error_rate_increase=0.01,
    max_p95_latency_ratio=1.5,
)
GOOD = Tally(1000, 980)
BALANCED = {c: Tally(100, 98) for c in range(10)}


@pytest.mark.parametrize(
    ("new_labels", "drift", "live", "classes", "retrain", "reason"),
    [
        (200, True, GOOD, BALANCED, True, "drift detected"),
        (199, True, GOOD, BALANCED, False, "199 new labels < 200"),
        (5000, False, GOOD, BALANCED, False, "within thresholds"),
        (200, False, Tally(1000, 949), BALANCED, True, "live accuracy 0.949 < 0.95"),
        (200, False, Tally(1000, 950), BALANCED, False, "within thresholds"),
        (200, False, GOOD, {**BALANCED, 7: Tally(10, 8)}, True, "class 7 error rate 0.20"),
        (200, False, GOOD, {**BALANCED, 7: Tally(10, 9)}, False, "within thresholds"),
        (200, False, GOOD, {**BALANCED, 7: Tally(9, 0)}, False, "within thresholds"),  # too few
        (0, False, Tally(0, 0), {}, False, "0 new labels"),
    ],
)
def test_decide(new_labels, drift, live, classes, retrain, reason):
    decision = decide(new_labels, drift, 0.5 if drift else 0.1, live, classes, S)
    assert decision.retrain is retrain
    assert any(reason in r for r in decision.reasons), decision.reasons


@pytest.mark.parametrize(
    ("champ", "chall", "champ_hold", "chall_hold", "passed", "reason"),
    [
        (0.995, 0.995, Tally(100, 80), Tally(100, 95), True, "held-out feedback +0.150"),
        (0.995, 0.990, Tally(100, 80), Tally(100, 95), True, "MNIST -0.0050"),  # at the bound
        (0.995, 0.989, Tally(100, 80), Tally(100, 95), False, "MNIST accuracy fell by 0.0060"),
        (0.995, 0.996, Tally(100, 95), Tally(100, 95), False, "does not beat"),  # a tie loses
        (0.995, 0.996, Tally(100, 96), Tally(100, 95), False, "does not beat"),
        (0.995, 0.996, Tally(0, 0), Tally(0, 0), False, "no held-out feedback"),
    ],
)
def test_gate(champ, chall, champ_hold, chall_hold, passed, reason):
    result = gate(champ, chall, champ_hold, chall_hold, S)
    assert result.passed is passed
    assert any(reason in r for r in result.reasons), result.reasons


def test_gate_needs_the_same_holdout():
    with pytest.raises(ValueError, match="same held-out"):
        gate(0.99, 0.99, Tally(100, 90), Tally(90, 80), S)


@pytest.mark.parametrize(
    ("canary", "stable", "action", "reason"),
    [
        (Tally(199, 199), Tally(1000, 900), "wait", "199 labelled canary predictions < 200"),
        (Tally(200, 195), Tally(800, 640), "promote", "not worse"),  # clearly better
        (Tally(200, 190), Tally(200, 185), "promote", "not worse"),
        (Tally(600, 570), Tally(3000, 2850), "promote", "not worse"),  # equal, enough data
        (Tally(200, 194), Tally(200, 194), "wait", "undecided"),  # equal, too little
        (Tally(2000, 1880), Tally(2000, 1900), "rollback", "still undecided"),
        (Tally(200, 60), Tally(800, 760), "rollback", "worse"),  # worse by a clear margin
        (Tally(300, 255), Tally(3000, 2850), "rollback", "worse"),  # 0.85 vs 0.95
        (Tally(200, 200), Tally(200, 200), "promote", "not worse"),  # all right: no NaN
        (Tally(250, 240), Tally(0, 0), "wait", "no labelled stable"),
    ],
)
def test_analyse(canary, stable, action, reason):
    verdict = analyse(canary, stable, S)
    assert verdict.action == action
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_analyse_rolls_back_on_errors_or_latency_even_when_accurate():
    accurate = (Tally(400, 396), Tally(2000, 1900))
    errors = analyse(*accurate, S, ServingHealth(error_rate=0.03), ServingHealth(error_rate=0.01))
    assert errors.action == "rollback" and "error rate" in errors.reasons[0]
    slow = analyse(
        *accurate, S, ServingHealth(p95_latency_s=0.16), ServingHealth(p95_latency_s=0.10)
    )
    assert slow.action == "rollback" and "p95 latency" in slow.reasons[0]
    fine = analyse(*accurate, S, ServingHealth(0.011, 0.15), ServingHealth(0.01, 0.10))
    assert fine.action == "promote"


def test_tally_checks_its_counts():
    with pytest.raises(ValueError):
        Tally(10, 11)

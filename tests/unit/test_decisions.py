"""Table-driven tests of the loop's decisions: decide, gate, analyse, at their boundaries,
and of the paired sequential evidence the canary decision weighs."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.canary_calibration import Challenger, Labelling, calibrate
from pipelines.decisions import CanaryEvidence, ServingHealth, Tally, analyse, decide, gate
from pipelines.outputs import AnswerQuality
from pipelines.paired import PairedCounts, count_pairs, e_values
from pipelines.settings import DecisionSettings

S = DecisionSettings(
    _env_file=None,
    min_new_labels=200,
    accuracy_threshold=0.95,
    class_error_threshold=0.2,
    min_class_samples=10,
    max_mnist_regression=0.005,
    min_holdout_gain=0.0,
    canary_min_answers=50,
    canary_max_labels=1500,
    false_promotion_rate=0.05,
    false_rollback_rate=0.05,
    max_error_rate_increase=0.01,
    max_p95_latency_ratio=1.5,
)


def answered(answers: int, corrected: int, estimate: float | None = None) -> AnswerQuality:
    return AnswerQuality(
        answers=answers, confirmed=0, corrected=corrected, estimated_accuracy=estimate
    )


GOOD = answered(1000, 20)
BALANCED = {digit: answered(100, 2) for digit in range(10)}


@pytest.mark.parametrize(
    ("new_labels", "drift", "overall", "digits", "retrain", "reason"),
    [
        (200, True, GOOD, BALANCED, True, "drift detected"),
        (199, True, GOOD, BALANCED, False, "199 new labels < 200"),
        (5000, False, GOOD, BALANCED, False, "within thresholds"),
        (200, False, answered(1000, 51), BALANCED, True, "at most 0.949 < 0.95"),
        (200, False, answered(1000, 50), BALANCED, False, "within thresholds"),
        (200, False, GOOD, {**BALANCED, 7: answered(10, 2)}, True, "answers 7 corrected 0.20"),
        (200, False, GOOD, {**BALANCED, 7: answered(10, 1)}, False, "within thresholds"),
        (200, False, GOOD, {**BALANCED, 7: answered(9, 9)}, False, "within thresholds"),  # few
        (0, False, answered(0, 0), {}, False, "0 new labels"),
    ],
)
def test_decide(new_labels, drift, overall, digits, retrain, reason):
    decision = decide(new_labels, drift, 0.5 if drift else 0.1, overall, digits, S)
    assert decision.retrain is retrain
    assert any(reason in r for r in decision.reasons), decision.reasons


def test_decide_is_not_fooled_by_people_who_only_correct():
    """Every labelled answer is a correction, yet 2 % of answers were wrong: no reason."""
    only_corrections = AnswerQuality(answers=1000, confirmed=0, corrected=20)
    assert only_corrections.labelled_accuracy == 0.0
    decision = decide(500, False, 0.1, only_corrections, BALANCED, S)
    assert decision.retrain is False, decision.reasons


@pytest.mark.parametrize(
    ("estimate", "on", "retrain"),
    [(0.949, True, True), (0.95, True, False), (0.949, False, False), (None, True, False)],
)
def test_decide_on_the_label_free_estimate_only_when_asked(estimate, on, retrain):
    settings = S.model_copy(update={"estimate_trigger": on})
    decision = decide(500, False, 0.1, answered(1000, 0, estimate), BALANCED, settings)
    assert decision.retrain is retrain, decision.reasons
    assert retrain == any("estimated accuracy" in r for r in decision.reasons)


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


W = 0.2  # the canary's share in these tables


def evidence(
    stable_wrong_challenger_right: int = 0,
    canary_wrong_champion_right: int = 0,
    canary_right_champion_wrong: int = 0,
    stable_right_challenger_wrong: int = 0,
    labelled: int = 100,
    canary_answers: int = 80,
) -> CanaryEvidence:
    paired = PairedCounts(
        stable_wrong_challenger_right,
        canary_wrong_champion_right,
        canary_right_champion_wrong,
        stable_right_challenger_wrong,
        canary_share=W,
    )
    return CanaryEvidence(paired=paired, labelled=labelled, canary_answers=canary_answers)


@pytest.mark.parametrize(
    ("case", "action", "basis", "reason"),
    [
        (evidence(), "wait", None, "undecided"),
        (evidence(10, 0, 3, 0), "promote", "evidence", "better"),
        (evidence(10, 0, 3, 0, canary_answers=49), "wait", None, "49 answers < 50"),
        (evidence(10, 0, 3, 0, canary_answers=50), "promote", "evidence", "better"),
        (evidence(5, 0, 0, 0), "wait", None, "undecided"),  # stable's corrections say little
        (evidence(0, 0, 3, 0), "promote", "evidence", "better"),  # canary confirmations: a lot
        (evidence(0, 3, 0, 10), "rollback", "evidence", "worse"),
        (evidence(0, 2, 0, 0), "wait", None, "undecided"),
        (evidence(20, 2, 4, 3), "wait", None, "undecided"),  # better, not yet shown
        (evidence(20, 2, 4, 3, labelled=1499), "wait", None, "undecided"),
        (evidence(20, 2, 4, 3, labelled=1500), "rollback", "budget", "still undecided"),
    ],
)
def test_analyse(case, action, basis, reason):
    verdict = analyse(case, S)
    assert (verdict.action, verdict.basis) == (action, basis), verdict.reasons
    assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_analyse_rolls_back_on_errors_or_latency_even_when_better():
    better = evidence(10, 0, 3, 0)
    errors = analyse(better, S, ServingHealth(error_rate=0.03), ServingHealth(error_rate=0.01))
    assert errors.action == "rollback" and "error rate" in errors.reasons[0]
    assert errors.basis == "health"
    slow = analyse(better, S, ServingHealth(p95_latency_s=0.16), ServingHealth(p95_latency_s=0.10))
    assert slow.action == "rollback" and "p95 latency" in slow.reasons[0]
    fine = analyse(better, S, ServingHealth(0.011, 0.15), ServingHealth(0.01, 0.10))
    assert fine.action == "promote"


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_no_canary_traffic_is_no_evidence(share):
    """Images served while only one track ran say nothing with selective labels."""
    e = e_values(PairedCounts(30, 0, 5, 0, canary_share=share))
    assert (e.better, e.worse, e.psi_hat) == (1.0, 1.0, None)


def test_evidence_grows_with_what_favours_each_side():
    weak, strong = e_values(PairedCounts(0, 0, 2, 0, W)), e_values(PairedCounts(0, 0, 3, 0, W))
    assert 1 < weak.better < strong.better and strong.worse < weak.worse < 1
    mixed = e_values(PairedCounts(20, 2, 4, 3, W))
    assert mixed.psi_hat == pytest.approx(3.7, rel=0.1)


def test_count_pairs_sorts_each_image_into_its_stratum():
    # canary?, served right?, champion right?, challenger right?
    rows = np.array(
        [
            (False, False, False, True),  # stable wrong, challenger right
            (True, False, True, False),  # canary wrong, champion right
            (True, True, False, True),  # canary right, champion wrong
            (False, True, True, False),  # stable right, challenger wrong
            (False, True, True, True),  # both right: concordant
            (True, False, False, False),  # both wrong: concordant
        ]
    )
    counts = count_pairs(*rows.T, canary_share=W)
    assert counts == PairedCounts(1, 1, 1, 1, canary_share=W)
    assert (counts.for_challenger, counts.for_champion) == (2, 2)


def test_paired_counts_check_their_fields():
    with pytest.raises(ValueError, match="canary_share"):
        PairedCounts(canary_share=1.5)
    with pytest.raises(ValueError, match="negative"):
        PairedCounts(-1, canary_share=W)


def test_an_equal_challenger_is_seldom_promoted_however_often_the_loop_looks():
    """The sequential test's point: a test at a fixed level, repeated at each of 30 looks,
    has no bound on how often it promotes; the e-values keep under
    ``false_promotion_rate`` (counts over 300 canaries)."""
    rows = calibrate(
        S,
        canaries=300,
        challengers=[Challenger("equal", 0.91, 0.91, disagreement=0.03)],
        labellings=[Labelling("one in five", 0.2, 0.2)],
        max_runs=30,
    )
    # 5 % of 300 is 15; 27 is beyond its binomial 99.9 % bound.
    assert rows[0].promoted <= 27, rows[0]


def test_calibration_separates_better_from_worse_challengers():
    rows = {
        row.challenger: row
        for row in calibrate(
            S, canaries=60, labellings=[Labelling("one in five", 0.2, 0.2)], max_runs=40
        )
    }
    assert rows["5 points better"].promoted >= 54  # 90 %
    assert rows["2 points worse"].promoted <= 3
    assert rows["2 points worse"].rolled_back >= 30


def test_tally_checks_its_counts():
    with pytest.raises(ValueError):
        Tally(10, 11)

"""How the canary decision behaves, measured by simulation through the real decision code.

Each simulated canary has a champion and a challenger of known true accuracy. Every loop
run, users draw ``answers_per_run`` digits; each goes to the canary with probability
``canary_share``; people confirm a right answer with probability ``confirm`` and correct a
wrong one with probability ``correct``. The accumulated labelled images go through
:func:`pipelines.paired.count_pairs`' strata and :func:`pipelines.decisions.analyse` after
every run, exactly as the loop does, until it promotes, rolls back, or ``max_runs`` pass.
``digitloop loop calibrate`` prints the rates, with their counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from pipelines.decisions import CanaryEvidence, analyse
from pipelines.paired import PairedCounts
from pipelines.settings import DecisionSettings


@dataclass(frozen=True)
class Challenger:
    """True accuracies of a canary's two models on the traffic.

    ``disagreement`` is the share of images the better model gets wrong and the worse one
    right: models retrained from one another still differ on a few images each way.
    """

    name: str
    champion_accuracy: float
    challenger_accuracy: float
    disagreement: float = 0.01

    def joint(self) -> np.ndarray:
        """P(both right), P(only champion), P(only challenger), P(both wrong)."""
        diff = self.challenger_accuracy - self.champion_accuracy
        only_challenger = max(diff, 0.0) + self.disagreement
        only_champion = max(-diff, 0.0) + self.disagreement
        both_right = self.champion_accuracy - only_champion
        both_wrong = 1.0 - both_right - only_champion - only_challenger
        p = np.array([both_right, only_champion, only_challenger, both_wrong])
        if (p < -1e-12).any():
            raise ValueError(f"{self.name}: accuracies and disagreement are inconsistent")
        return np.clip(p, 0.0, None) / np.clip(p, 0.0, None).sum()


@dataclass(frozen=True)
class Labelling:
    """How people label: the chance they confirm a right answer and correct a wrong one."""

    name: str
    confirm: float
    correct: float


CHALLENGERS = (
    Challenger("2 points worse", 0.91, 0.89),
    Challenger("equal", 0.91, 0.91),
    Challenger("5 points better", 0.91, 0.96),
)
LABELLINGS = (
    Labelling("one answer in five", 0.2, 0.2),
    Labelling("corrections only", 0.0, 0.2),
)


@dataclass(frozen=True)
class Outcome:
    action: str  # promote, rollback (shown worse), budget (rolled back undecided), undecided
    labels: int  # labelled answers when it was decided
    runs: int


def simulate_canary(
    challenger: Challenger,
    labelling: Labelling,
    settings: DecisionSettings,
    rng: np.random.Generator,
    answers_per_run: int = 400,
    canary_share: float = 0.5,
    max_runs: int = 200,
) -> Outcome:
    """One canary from its first run to its verdict."""
    joint = challenger.joint()
    # Per category (both right, only champion, only challenger, both wrong): is the
    # champion / the challenger right?
    champion_right = np.array([True, True, False, False])
    challenger_right = np.array([True, False, True, False])
    strata = np.zeros(4, np.int64)  # the PairedCounts fields, in order
    labelled = canary_answers = 0
    for run in range(1, max_runs + 1):
        on_canary = rng.binomial(answers_per_run, canary_share)
        canary_answers += on_canary
        for track_canary, n in ((True, on_canary), (False, answers_per_run - on_canary)):
            counts = rng.multinomial(n, joint)
            served_right = challenger_right if track_canary else champion_right
            keep = np.where(served_right, labelling.confirm, labelling.correct)
            seen = rng.binomial(counts, keep)
            labelled += int(seen.sum())
            only_champion, only_challenger = seen[1], seen[2]
            if track_canary:
                strata[1] += only_champion  # canary (challenger) wrong, champion right
                strata[2] += only_challenger  # canary right, champion wrong
            else:
                strata[0] += only_challenger  # stable (champion) wrong, challenger right
                strata[3] += only_champion  # stable right, challenger wrong
        evidence = CanaryEvidence(
            paired=PairedCounts(*(int(n) for n in strata), canary_share=canary_share),
            labelled=labelled,
            canary_answers=canary_answers,
        )
        verdict = analyse(evidence, settings)
        if verdict.action != "wait":
            action = "budget" if verdict.basis == "budget" else verdict.action
            return Outcome(action, labelled, run)
    return Outcome("undecided", labelled, max_runs)


@dataclass(frozen=True)
class CalibrationRow:
    challenger: str
    labelling: str
    canaries: int
    promoted: int
    rolled_back: int  # shown worse
    out_of_budget: int  # rolled back undecided, at canary_max_labels
    undecided: int  # still waiting after max_runs
    mean_labels_to_decision: float | None
    mean_runs_to_decision: float | None

    @property
    def promoted_share(self) -> float:
        return self.promoted / self.canaries

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "promoted_share": self.promoted_share}


def calibrate(
    settings: DecisionSettings,
    canaries: int = 1000,
    challengers: Iterable[Challenger] = CHALLENGERS,
    labellings: Iterable[Labelling] = LABELLINGS,
    seed: int = 0,
    **traffic: float,
) -> list[CalibrationRow]:
    """``canaries`` simulated canaries per challenger and labelling; ``traffic`` goes to
    :func:`simulate_canary` (answers_per_run, canary_share, max_runs)."""
    rows = []
    for labelling in labellings:
        for challenger in challengers:
            rng = np.random.default_rng(seed)
            outcomes = [
                simulate_canary(challenger, labelling, settings, rng, **traffic)  # type: ignore[arg-type]
                for _ in range(canaries)
            ]
            decided = [o for o in outcomes if o.action in ("promote", "rollback")]
            rows.append(
                CalibrationRow(
                    challenger=challenger.name,
                    labelling=labelling.name,
                    canaries=canaries,
                    promoted=sum(o.action == "promote" for o in outcomes),
                    rolled_back=sum(o.action == "rollback" for o in outcomes),
                    out_of_budget=sum(o.action == "budget" for o in outcomes),
                    undecided=sum(o.action == "undecided" for o in outcomes),
                    mean_labels_to_decision=float(np.mean([o.labels for o in decided]))
                    if decided
                    else None,
                    mean_runs_to_decision=float(np.mean([o.runs for o in decided]))
                    if decided
                    else None,
                )
            )
    return rows

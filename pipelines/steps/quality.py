"""Quality: live accuracy from joined feedback, overall, per model version and track, per class."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipelines.decisions import Tally
from pipelines.outputs import CollectOutput, LiveAccuracy, QualityOutput
from pipelines.steps.context import LoopContext


@dataclass(frozen=True)
class QualityReport:
    overall: Tally
    by_track: dict[tuple[str, str], Tally]  # (model_version, track) -> tally
    by_class: dict[int, Tally]  # true label -> tally

    def output(self) -> QualityOutput:
        def accuracy(t: Tally) -> LiveAccuracy:
            return LiveAccuracy(n=t.n, correct=t.correct)

        return QualityOutput(
            overall=accuracy(self.overall),
            by_track={
                f"{track}:v{version}": accuracy(t)
                for (version, track), t in sorted(self.by_track.items())
            },
            by_class={c: accuracy(t) for c, t in sorted(self.by_class.items())},
        )

    def track(self, track: str, version: str | None = None) -> Tally:
        """The tally of one track (and version, if given), summed over what matches."""
        n = correct = 0
        for (v, t), tally in self.by_track.items():
            if t == track and (version is None or v == version):
                n, correct = n + tally.n, correct + tally.correct
        return Tally(n, correct)


def quality(labelled: pd.DataFrame) -> QualityReport:
    """Tally right and wrong answers of labelled predictions (``label`` vs ``true_label``)."""
    if labelled.empty:
        return QualityReport(Tally(0, 0), {}, {})
    right = labelled["label"] == labelled["true_label"]

    def tallies(keys) -> dict:
        grouped = right.groupby(keys).agg(["size", "sum"])
        return {key: Tally(int(n), int(c)) for key, (n, c) in grouped.iterrows()}

    by_track = tallies([labelled["model_version"].astype(str), labelled["track"].astype(str)])
    by_class = {int(k): v for k, v in tallies(labelled["true_label"]).items()}
    return QualityReport(Tally(len(labelled), int(right.sum())), by_track, by_class)


def step_quality(ctx: LoopContext, collect: CollectOutput) -> QualityOutput:
    """Live accuracy and per-class error rates, per model version and track."""
    return quality(ctx.window(collect.since, collect.until).labelled).output()

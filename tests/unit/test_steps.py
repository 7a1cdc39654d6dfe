"""Each step of the loop on a local store, with the registry and the rollout driver in memory:
what it reads, what it decides, what it changes, and the typed output it hands on.

Traffic goes into the store through the service's own writers (the predictions log and the
feedback writer); models are small untrained networks, trained for one short epoch where a
step trains. MLflow and a serving backend are left to tests/integration/test_loop.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import SecretStr
from rich.console import Console
from torch import nn

from contracts.records import FeedbackRecord, PredictionRecord
from contracts.registry import CHALLENGER_ALIAS, CHAMPION_ALIAS
from contracts.routing import RoutingState
from model.network import DigitNet, ModelOutputs, model_outputs
from model.novelty import NoveltyScorer, fit_scorer
from model.registry import ModelVersionInfo, TrainingRecord
from model.settings import ModelSettings
from pipelines.drift.adapted import adapted_reference_path
from pipelines.drift.detect import DriftSettings
from pipelines.drift.geometry import GeometryScorer, fit_geometry, geometry_features
from pipelines.outputs import (
    AnalyseOutput,
    AnswerQuality,
    CanaryOutput,
    CollectCounts,
    CollectOutput,
    DecideOutput,
    DriftOutput,
    LiveAccuracy,
    QualityOutput,
    RetrainOutput,
    RunOutputs,
    Summary,
)
from pipelines.runners.argo import run_step
from pipelines.runners.local import run_once
from pipelines.settings import DecisionSettings, LoopSettings
from pipelines.steps import LoopContext
from pipelines.steps.analyse import canary_since, step_analyse
from pipelines.steps.canary import step_canary
from pipelines.steps.collect import EPOCH, step_collect
from pipelines.steps.compact import step_compact
from pipelines.steps.decide import step_decide
from pipelines.steps.drift import step_drift
from pipelines.steps.finish import finish, summarise
from pipelines.steps.labelling import LOOKBACK
from pipelines.steps.quality import step_quality
from pipelines.steps.retrain import pseudo_label_rows, step_retrain
from pipelines.steps.window import GRACE, read_window
from services.store.backends import LocalStore, StoreSettings
from services.store.writers import FeedbackWriter, PredictionLog

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


# -- the registry and the serving side, in memory ------------------------------------------


class FakeRegistry:
    """What the steps use of :class:`model.registry.Registry`, without MLflow: versions with
    their networks and tags (the tags the real one writes), and aliases."""

    def __init__(self) -> None:
        self.infos: dict[str, ModelVersionInfo] = {}
        self.nets: dict[str, nn.Module] = {}
        self.aliases: dict[str, str] = {}
        self.scorers: dict[str, NoveltyScorer] = {}

    def add(
        self,
        net: nn.Module,
        tags: dict[str, str] | None = None,
        novelty: NoveltyScorer | None = None,
    ) -> ModelVersionInfo:
        version = str(len(self.infos) + 1)
        info = ModelVersionInfo("digitloop-mnist", version, [], tags or {}, f"run-{version}")
        self.infos[version], self.nets[version] = info, net
        if novelty is not None:
            self.scorers[version] = novelty
        self.aliases.setdefault(CHAMPION_ALIAS, version)
        return info

    def novelty(self, info: ModelVersionInfo) -> NoveltyScorer | None:
        return self.scorers.get(info.version)

    def log_and_register(self, net: nn.Module, record: TrainingRecord) -> ModelVersionInfo:
        tags = {
            "parent_version": record.parent_version or "",
            "training_data": json.dumps(record.training_data, sort_keys=True),
            "mnist_test_accuracy": f"{record.mnist_test.accuracy:.6f}",
        }
        if "feedback_holdout_accuracy" in record.extra_metrics:
            tags["feedback_holdout_accuracy"] = (
                f"{record.extra_metrics['feedback_holdout_accuracy']:.6f}"
            )
        return self.add(net, tags, record.novelty)

    def get(self, ref: str | int) -> ModelVersionInfo:
        return self.infos[self.aliases.get(str(ref), str(ref))]

    def load(self, ref: str | int = CHAMPION_ALIAS) -> tuple[nn.Module, ModelVersionInfo]:
        info = self.get(ref)
        return self.nets[info.version].eval(), info

    def versions(self) -> list[ModelVersionInfo]:
        return list(self.infos.values())

    def set_alias(self, alias: str, version: str) -> None:
        self.aliases[alias] = self.get(version).version

    def delete_alias(self, alias: str) -> None:
        self.aliases.pop(alias, None)

    def alias_version(self, alias: str) -> str | None:
        return self.aliases.get(alias)


@dataclass
class FakeRollout:
    """What serves where, and every change applied to it."""

    state: RoutingState
    applied: list[RoutingState] = field(default_factory=list)

    def current(self) -> RoutingState:
        return self.state

    def apply(self, state: RoutingState) -> None:
        self.applied.append(state)
        self.state = state


def untrained_net(seed: int = 0) -> DigitNet:
    """A narrow network, quick to train and run; the steps never look inside it."""
    torch.manual_seed(seed)
    return DigitNet(channels=(8, 16, 32), hidden=32).eval()


# -- traffic --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drawn:
    """One prediction, and the true digit if a person gave feedback on it."""

    prediction_id: str
    ts: datetime | None  # None: the log never got the prediction (or has not yet)
    label: int
    true_label: int | None = None
    feedback_ts: datetime | None = None
    track: str = "stable"
    version: str = "1"
    image: np.ndarray | None = None
    confidence: float = 0.1  # the answered digit's probability; the rest share what is left
    novelty: float | None = None  # the score the service logged with it

    def probabilities(self) -> np.ndarray:
        probabilities = np.full(10, (1 - self.confidence) / 9, np.float32)
        probabilities[self.label] = self.confidence
        return probabilities


def log_traffic(store: LocalStore, spool: Path, drawn: Iterable[Drawn]) -> None:
    """Write predictions and feedback as the service does, through its writers."""
    log = PredictionLog(store, pod="test")
    writer = FeedbackWriter(store, spool)
    for d in drawn:
        if d.ts is not None:
            log.append(
                PredictionRecord(
                    prediction_id=d.prediction_id,
                    ts=d.ts,
                    model_version=d.version,
                    track=d.track,
                    image=np.zeros((28, 28), np.uint8) if d.image is None else d.image,
                    probabilities=d.probabilities(),
                    label=d.label,
                    latency_ms=1.0,
                    novelty=d.novelty,
                )
            )
        if d.true_label is not None:
            at = d.feedback_ts or d.ts
            assert at is not None
            writer.write(FeedbackRecord(d.prediction_id, d.true_label, at))
    log.flush()


def feedback_only(prediction_id: str, true_label: int, at: datetime) -> Drawn:
    """Feedback on a prediction the log never got (or has not got yet)."""
    return Drawn(prediction_id, None, 0, true_label, at)


def labelled(prefix: str, n: int, correct: int, track: str, version: str) -> list[Drawn]:
    """``n`` labelled predictions of ``track``, ``correct`` of them right."""
    start = NOW - timedelta(hours=1)
    return [
        Drawn(
            f"{prefix}{i:04d}",
            start + timedelta(seconds=i),
            label=3 if i < correct else 5,
            true_label=3,
            track=track,
            version=version,
        )
        for i in range(n)
    ]


# -- the context ----------------------------------------------------------------------------


@pytest.fixture
def ctx(tmp_path: Path) -> LoopContext:
    """A run at NOW on a local store; champion v1 (MNIST only) serves stable, no canary."""
    data = tmp_path / "data"
    context = LoopContext(
        run_id="run-1",
        loop=LoopSettings(
            _env_file=None, prometheus_url=None, webhook_url=None, holdout_fraction=0.25
        ),
        decisions=DecisionSettings(_env_file=None, min_new_labels=20, canary_min_answers=5),
        drift=DriftSettings(_env_file=None, drift_reference_size=1000),
        model=ModelSettings(_env_file=None, data_dir=data),
        store_settings=StoreSettings(_env_file=None, data_dir=data),
        now=NOW,
    )
    context.store = LocalStore(tmp_path / "store")
    context.registry = FakeRegistry()
    context.registry.add(untrained_net())
    context.rollout = FakeRollout(RoutingState("1"))
    return context


def traffic(ctx: LoopContext, drawn: Iterable[Drawn]) -> None:
    log_traffic(ctx.store, ctx.model.data_dir / "spool", drawn)


def collected(ctx: LoopContext) -> CollectOutput:
    output = step_collect(ctx)
    ctx.save(output)
    return output


# -- collect --------------------------------------------------------------------------------


def test_collect_joins_feedback_and_counts_what_did_not_join(ctx):
    traffic(
        ctx,
        [
            Drawn("right", NOW - timedelta(hours=2), label=7, true_label=7),
            Drawn("wrong", NOW - timedelta(hours=1), label=1, true_label=7),
            Drawn("unlabelled", NOW - timedelta(minutes=30), label=4),
            # after the run's `until`: neither the prediction nor its feedback counts
            Drawn("later", NOW + timedelta(minutes=1), label=2, true_label=2),
            # the prediction is not logged yet: pending within GRACE, orphaned after it
            feedback_only("pending", 3, NOW - GRACE / 2),
            feedback_only("orphan", 3, NOW - 2 * GRACE),
        ],
    )
    output = step_collect(ctx)
    assert output.counts == CollectCounts(
        predictions=3, feedback=4, joined=2, pending=1, orphaned=1
    )
    assert (output.since, output.until) == (EPOCH, NOW)  # v1 was trained on MNIST only
    assert output.stable_version == "1"
    assert output.canary_version is None and not output.canary_active
    assert output.canary_weight == 0
    labels = ctx.window(output.since, output.until).labelled
    assert dict(zip(labels["prediction_id"], labels["true_label"], strict=True)) == {
        "right": 7,
        "wrong": 7,
    }


def test_collect_starts_where_the_champions_feedback_ended(ctx):
    """A champion trained on feedback: the window starts at its newest feedback; feedback
    after that joins a prediction made before it (within LOOKBACK), which is not counted."""
    cutoff = NOW - timedelta(days=1)
    trained_on = {"training_data": json.dumps({"feedback_until": cutoff.isoformat()})}
    ctx.registry.add(untrained_net(1), trained_on)
    ctx.rollout = FakeRollout(RoutingState("2", "1", 20))
    traffic(
        ctx,
        [
            Drawn("old", cutoff - timedelta(hours=1), 5, 6, feedback_ts=NOW - GRACE / 2),
            Drawn("trained-on", cutoff - timedelta(hours=2), 5, true_label=5),
            Drawn("too-old", cutoff - LOOKBACK - timedelta(hours=1), 5, 5, NOW - 2 * GRACE),
            Drawn("new", NOW - timedelta(hours=1), 5, track="canary", version="1"),
        ],
    )
    output = step_collect(ctx)
    assert output.since == cutoff and output.stable_version == "2"
    assert output.counts == CollectCounts(
        predictions=1, feedback=2, joined=1, pending=0, orphaned=1
    )
    assert output.canary_active and (output.canary_version, output.canary_weight) == ("1", 20)


def test_outputs_round_trip_through_the_store_and_argo_files(ctx, tmp_path):
    traffic(ctx, labelled("p", 3, 2, "stable", "1"))
    ran = run_step(ctx, "collect", tmp_path / "outputs")
    assert ctx.read(CollectOutput) == ran
    stored = json.loads(ctx.store.get(ctx.key("collect")))  # what a person reads in the store
    assert stored["counts"]["joined"] == 3
    files = {p.name: p.read_text() for p in (tmp_path / "outputs").iterdir()}
    assert files == {"stable_version": "1", "canary_version": "", "canary_active": "false"}
    # the next pod reads it back from the store
    overall = run_step(ctx, "quality").overall
    assert (overall.answers, overall.confirmed, overall.corrected) == (3, 2, 1)


def test_a_step_refuses_to_run_without_the_outputs_it_reads(ctx):
    with pytest.raises(RuntimeError, match="step decide needs the output of collect, quality"):
        run_step(ctx, "decide")


# -- quality --------------------------------------------------------------------------------


def test_quality_counts_answers_per_track_version_and_digit(ctx):
    ctx.rollout = FakeRollout(RoutingState("1", "2", 20))
    traffic(
        ctx,
        [
            *labelled("s", 4, 3, "stable", "1"),
            *labelled("c", 2, 1, "canary", "2"),
            Drawn("seven", NOW - timedelta(minutes=5), 7, true_label=7),
            Drawn("unlabelled", NOW - timedelta(minutes=5), 7),
        ],
    )
    output = step_quality(ctx, collected(ctx))

    def counts(quality):
        return quality.answers, quality.confirmed, quality.corrected

    assert counts(output.overall) == (8, 5, 2)
    assert output.overall.labelled_accuracy == pytest.approx(5 / 7)
    assert output.overall.corrected_share == pytest.approx(2 / 8)
    assert {k: counts(v) for k, v in output.by_track.items()} == {
        "canary:v2": (2, 1, 1),
        "stable:v1": (6, 4, 1),
    }
    # Per digit, the champion's own answers only (decide's class trigger reads it): stable
    # answered 3 and was right 3 times, answered 5 once and was corrected; the canary's
    # answers (a right 3 and a corrected 5) are not the champion's.
    assert {k: counts(v) for k, v in output.by_answer.items()} == {
        3: (3, 3, 0),
        5: (1, 0, 1),
        7: (2, 1, 0),
    }
    assert output.by_class == {3: LiveAccuracy(n=6, correct=4), 7: LiveAccuracy(n=1, correct=1)}
    # the label-free estimate is the mean top probability: this log's are all uniform
    assert output.overall.estimated_accuracy == pytest.approx(0.1)


def test_quality_of_a_window_without_labels(ctx):
    traffic(ctx, [Drawn("unlabelled", NOW - timedelta(minutes=5), 7)])
    output = step_quality(ctx, collected(ctx))
    assert (output.overall.answers, output.overall.labelled) == (1, 0)
    assert output.overall.labelled_accuracy is None and output.by_class == {}


# -- drift ----------------------------------------------------------------------------------


def test_drift_reports_no_verdict_on_a_window_too_small(ctx, mnist):
    ctx.mnist = mnist
    images = mnist.x_test[:5]
    traffic(
        ctx,
        [Drawn(f"p{i}", NOW - timedelta(minutes=i + 1), 1, image=x) for i, x in enumerate(images)],
    )
    output = step_drift(ctx, collected(ctx))
    assert not output.drift_detected and output.drift_score == 0.0
    assert "5 images" in output.skipped and str(ctx.drift.drift_window_min) in output.skipped
    assert output.report is None and not ctx.store.list("reports/")


def no_odd_shapes(*args) -> GeometryScorer:
    """A geometry scorer that flags nothing, for tests of the step's other tests."""
    return GeometryScorer(
        classes=np.arange(10),
        means=np.zeros((10, 4)),
        precisions=np.tile(np.eye(4), (10, 1, 1)),
        threshold=1e9,
        share=0.05,
        target_share=0.05,
        n_fit=0,
        n_calibration=0,
    )


@dataclass(frozen=True)
class Verdict:
    """What the drift step reads of :class:`pipelines.drift.detect.DriftResult`."""

    drift_detected: bool = True
    drift_score: float = 0.5
    drifted_columns: tuple[str, ...] = ("ink_mass", "stroke_width")
    n_current: int = 20

    def report_files(self) -> dict[str, bytes]:
        return {"drift_report.html": b"<html></html>", "drift_report.json": b"{}"}


def test_drift_checks_the_latest_predictions_and_stores_the_report(ctx, mnist, monkeypatch):
    """Evidently's verdict itself is tests/unit/test_drift.py's: here, what the step gives
    it (the newest ``drift_window`` images of the window) and what it does with it."""
    checked = []

    def detect(net, images, reference, settings, *, outputs: ModelOutputs):
        checked.append((images, outputs))
        return Verdict()

    monkeypatch.setattr("pipelines.steps.drift.detect_drift", detect)
    monkeypatch.setattr("pipelines.steps.drift.model_reference", lambda *args: "reference")
    monkeypatch.setattr("pipelines.steps.drift.mnist_geometry", no_odd_shapes)
    ctx.mnist = mnist
    ctx.loop = ctx.loop.model_copy(update={"drift_window": 20})
    start = NOW - timedelta(hours=1)
    images = mnist.x_test[:30]
    traffic(
        ctx,
        [
            Drawn(f"p{i:02d}", start + timedelta(seconds=i), 1, image=x)
            for i, x in enumerate(images)
        ],
    )
    output = step_drift(ctx, collected(ctx))
    ((seen, outputs),) = checked
    np.testing.assert_array_equal(seen, images[-20:])
    # The step's one forward pass of those images, which the novelty test reads too.
    assert outputs.embeddings.shape[0] == 20
    assert output == DriftOutput(
        drift_detected=True,
        evidently_drift_detected=True,
        drift_score=0.5,
        drifted_columns=("ink_mass", "stroke_width"),
        n_current=20,
        report="reports/run-1/drift_report.html",
        geometry_detected=False,
        geometry_flagged=0,
        geometry_share=0.05,
        geometry_threshold=1e9,
        geometry_p_value=1.0,
    )
    assert ctx.store.get(output.report) == b"<html></html>"
    assert ctx.store.get("reports/run-1/drift_report.json") == b"{}"


def test_the_adapted_reference_is_built_once_per_version_not_once_per_pod(
    ctx, mnist, monkeypatch, tmp_path
):
    """Each Argo step has a data folder of its own: the reference is kept in the store, so
    the next run's pod neither reads the champion's traffic again nor takes newer traffic
    as the reference."""
    builds = []

    def adapted(net, info, reference, traffic, data_dir, settings):
        path = adapted_reference_path(data_dir, info.name, info.version)
        if not path.is_file():  # as pipelines.drift.reference.cached_reference does
            builds.append(data_dir)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"the traffic it was adapted to")
        return None

    monkeypatch.setattr("pipelines.steps.drift.adapted_reference", adapted)
    monkeypatch.setattr("pipelines.steps.drift.model_reference", lambda *args: "reference")
    monkeypatch.setattr("pipelines.steps.drift.mnist_geometry", no_odd_shapes)
    monkeypatch.setattr("pipelines.steps.drift.detect_drift", lambda *a, **k: Verdict())
    ctx.mnist = mnist
    traffic(ctx, [Drawn(f"p{i}", NOW - timedelta(minutes=i), 1) for i in range(5)])
    collect = collected(ctx)
    step_drift(ctx, collect)
    assert ctx.store.get("loop-state/references/digitloop-mnist-v1-adapted.npz") == (
        b"the traffic it was adapted to"
    )
    for pod in ("pod-2", "pod-3"):
        ctx.model = ctx.model.model_copy(update={"data_dir": tmp_path / pod})
        step_drift(ctx, collect)
    assert builds == [tmp_path / "data"]


@pytest.mark.parametrize("logged", [True, False])
@pytest.mark.parametrize(("flagged", "expected"), [(6, False), (7, True)])
def test_drift_is_either_test_and_the_novelty_test_fires_from_its_critical_count(
    ctx, mnist, monkeypatch, flagged, expected, logged
):
    """Evidently sees nothing; the champion's scorer flags some of the window's drawings.
    With 200 answers at a calibrated share of 1 % the test needs 7 flagged (p < 0.005)."""
    monkeypatch.setattr(
        "pipelines.steps.drift.detect_drift",
        lambda *a, **k: Verdict(drift_detected=False, drift_score=0.0, drifted_columns=()),
    )
    monkeypatch.setattr("pipelines.steps.drift.model_reference", lambda *args: "reference")
    monkeypatch.setattr("pipelines.steps.drift.mnist_geometry", no_odd_shapes)
    ctx.mnist = mnist
    ctx.loop = ctx.loop.model_copy(update={"drift_window": 200})
    net = ctx.registry.nets["1"]
    images = mnist.x_test[:200]
    groups = [f"mnist:{c}" for c in mnist.y_test[:2000]]
    base = fit_scorer(model_outputs(net, mnist.x_test[:2000]).embeddings, groups)
    computed = base.score(model_outputs(net, images).embeddings)
    # The threshold sits between the flagged-th highest score and the next.
    ranked = np.sort(computed)
    threshold = float(ranked[-flagged] + ranked[-flagged - 1]) / 2
    ctx.registry.scorers["1"] = dataclasses.replace(base, threshold=threshold, share=0.01)
    start = NOW - timedelta(hours=1)
    traffic(
        ctx,
        [
            Drawn(
                f"p{i:03d}",
                start + timedelta(milliseconds=10 * i),
                1,
                image=x,
                novelty=float(computed[i]) if logged else None,
            )
            for i, x in enumerate(images)
        ],
    )
    # One forward pass of the window, whether scores are logged or computed: Evidently's
    # features, the missing scores and the clusters all read it.
    embedded = []
    embed = net.embed
    monkeypatch.setattr(net, "embed", lambda pixels: embedded.append(len(pixels)) or embed(pixels))
    output = step_drift(ctx, collected(ctx))
    assert embedded == [200]
    assert output.evidently_drift_detected is False
    assert output.novelty_flagged == flagged
    assert output.novelty_detected is expected and output.drift_detected is expected
    report = json.loads(ctx.store.get("reports/run-1/novelty_report.json"))
    assert report["novelty"]["critical"] == 7
    assert report["novelty"]["from_log"] == (200 if logged else 0)
    # The flagged drawings, grouped, with examples in the report.
    assert sum(c["size"] for c in report["clusters"]) == flagged
    assert output.novelty_clusters == "reports/run-1/novelty_clusters.png"
    assert ctx.store.get(output.novelty_clusters).startswith(b"\x89PNG")


@pytest.mark.parametrize(("flagged", "expected"), [(19, False), (20, True)])
def test_the_geometry_test_alone_trips_drift_from_its_critical_count(
    ctx, mnist, monkeypatch, flagged, expected
):
    """Evidently sees nothing and the champion has no novelty scorer; the geometry scorer
    flags some of the window's drawings. With 200 answers at 5 % the test needs 20."""
    monkeypatch.setattr(
        "pipelines.steps.drift.detect_drift",
        lambda *a, **k: Verdict(drift_detected=False, drift_score=0.0, drifted_columns=()),
    )
    monkeypatch.setattr("pipelines.steps.drift.model_reference", lambda *args: "reference")
    ctx.mnist = mnist
    ctx.loop = ctx.loop.model_copy(update={"drift_window": 200})
    images = mnist.x_test[:200]
    # What the step scores: each drawing's geometry under the class the champion answered.
    answered = model_outputs(ctx.registry.nets["1"], images).probabilities.argmax(axis=1)
    base = fit_geometry(mnist.x_test[5000:7000], mnist.y_test[5000:7000])
    ranked = np.sort(base.score(geometry_features(images), answered))
    threshold = float(ranked[-flagged] + ranked[-flagged - 1]) / 2
    scorer = dataclasses.replace(base, threshold=threshold, share=0.05)
    fitted_on = []
    monkeypatch.setattr(
        "pipelines.steps.drift.mnist_geometry",
        lambda reference, mnist_test, share: fitted_on.append((reference, share)) or scorer,
    )
    start = NOW - timedelta(hours=1)
    traffic(
        ctx,
        [
            Drawn(f"p{i:03d}", start + timedelta(milliseconds=10 * i), 1, image=x)
            for i, x in enumerate(images)
        ],
    )
    output = step_drift(ctx, collected(ctx))
    assert fitted_on == [("reference", ctx.drift.drift_geometry_share)]
    assert output.evidently_drift_detected is False and output.novelty_detected is None
    assert output.geometry_flagged == flagged
    assert output.geometry_detected is expected and output.drift_detected is expected
    assert output.geometry_threshold == pytest.approx(threshold)
    report = json.loads(ctx.store.get("reports/run-1/geometry_report.json"))
    assert report["geometry"]["critical"] == 20
    assert report["geometry"]["flagged"] == flagged
    assert report["geometry"]["p_value"] == pytest.approx(output.geometry_p_value)
    assert report["scorer"]["n_fit"] == base.n_fit and report["model_version"] == "1"


# -- decide ---------------------------------------------------------------------------------


def collect_output(joined: int, canary: str | None = None) -> CollectOutput:
    return CollectOutput(
        since=EPOCH,
        until=NOW,
        counts=CollectCounts(
            predictions=joined, feedback=joined, joined=joined, pending=0, orphaned=0
        ),
        stable_version="1",
        canary_version=canary,
        canary_weight=20 if canary else 0,
        canary_active=canary is not None,
    )


def quality_output(n: int, correct: int) -> QualityOutput:
    """``n`` answers, all labelled, ``correct`` of them right."""
    answers = AnswerQuality(answers=n, confirmed=correct, corrected=n - correct)
    return QualityOutput(
        overall=answers,
        by_track={"stable:v1": answers},
        by_answer={3: answers},
        by_class={3: LiveAccuracy(n=n, correct=correct)},
    )


@pytest.mark.parametrize(
    ("joined", "drift", "accuracy", "canary", "retrain", "reason"),
    [
        (40, True, 1.0, None, True, "drift detected (score 0.50)"),
        (
            40,
            False,
            0.5,
            None,
            True,
            "20 of 40 answers corrected: live accuracy at most 0.500 < 0.95",
        ),
        (40, False, 1.0, None, False, "no drift, accuracy and class errors within thresholds"),
        (10, True, 0.5, None, False, "10 new labels < 20 needed"),
        (40, True, 0.5, "2", False, "a canary is being judged"),
    ],
)
def test_decide(ctx, joined, drift, accuracy, canary, retrain, reason):
    output = step_decide(
        ctx,
        collect_output(joined, canary),
        quality_output(joined, int(joined * accuracy)),
        DriftOutput(drift_detected=drift, drift_score=0.5 if drift else 0.1),
    )
    assert output.retrain is retrain and output.reasons[0] == reason


@pytest.mark.parametrize(
    ("found", "reason"),
    [
        (
            {"novelty_detected": True, "novelty_flagged": 23, "novelty_share": 0.05,
             "novelty_p_value": 0.0012},
            "23 unusual drawings of 200 (10 expected, p = 0.0012)",
        ),
        (
            {"geometry_detected": True, "geometry_flagged": 31, "geometry_share": 0.05,
             "geometry_p_value": 2.1e-5},
            "31 drawings of unusual stroke geometry of 200 (10 expected, p = 2.1e-05)",
        ),
    ],
    ids=["novelty", "geometry"],
)  # fmt: skip
def test_decide_says_which_per_drawing_test_found_the_drift(ctx, found, reason):
    drift = DriftOutput(
        drift_detected=True, evidently_drift_detected=False, n_current=200, drift_score=0.07,
        **found,
    )  # fmt: skip
    output = step_decide(ctx, collect_output(40), quality_output(40, 40), drift)
    assert output.retrain is True
    assert output.reasons[0] == (
        f"drift detected: {reason}, not in Evidently's columns (score 0.07)"
    )


def test_decide_judges_the_champion_on_its_own_answers(ctx):
    """The answers of the version it replaced (all corrected here) are no reason to retrain."""
    old = AnswerQuality(answers=100, confirmed=0, corrected=100)
    mine = AnswerQuality(answers=100, confirmed=100, corrected=0)
    quality = quality_output(100, 100).model_copy(
        update={"by_track": {"stable:v0": old, "stable:v1": mine}, "overall": old}
    )
    output = step_decide(
        ctx, collect_output(40), quality, DriftOutput(drift_detected=False, drift_score=0.1)
    )
    assert output.retrain is False, output.reasons


# -- retrain --------------------------------------------------------------------------------


def test_retrain_registers_a_gated_challenger_once_per_run(ctx, mnist):
    ctx.mnist = mnist.limit(n_train=300, n_test=300)
    ctx.loop = ctx.loop.model_copy(update={"retrain_epochs": 1, "retrain_mnist_limit": 300})
    start = NOW - timedelta(hours=1)
    traffic(
        ctx,
        [
            Drawn(f"p{i:03d}", start + timedelta(seconds=i), 0, int(y), image=x)
            for i, (x, y) in enumerate(zip(mnist.x_train[:40], mnist.y_train[:40], strict=True))
        ]
        # Unlabelled answers: the 5 sure ones join the training data as answered.
        + [
            Drawn(f"u{i}", start + timedelta(seconds=40 + i), 7, confidence=0.999 if i < 5 else 0.6)
            for i in range(8)
        ],
    )
    collect = collected(ctx)
    output = step_retrain(ctx, collect)
    challenger = ctx.registry.get(output.challenger)
    assert output.challenger == "2" and challenger.tags["parent_version"] == "1"
    assert (output.train_samples, output.holdout_samples) == (30, 10)  # the newest quarter
    training = json.loads(challenger.tags["training_data"])
    assert training["loop_run"] == "run-1" and training["feedback"] == 30
    assert output.pseudo_labelled == training["pseudo_labelled"] == 5
    assert training["feedback_until"] == (start + timedelta(seconds=39)).isoformat()
    assert output.mnist_test_accuracy == float(challenger.tags["mnist_test_accuracy"])
    assert output.holdout_accuracy == float(challenger.tags["feedback_holdout_accuracy"])
    assert output.gate_reasons and output.mlflow_run_id == challenger.run_id
    # Registered with a novelty scorer of its own training data, calibrated on MNIST test
    # (the 10 held-out labels are too few to calibrate on; 35 traffic images too few for
    # a component per class).
    scorer = ctx.registry.scorers["2"]
    assert scorer.n_calibration == 300 and scorer.n_fit == 300
    assert all(c.startswith("mnist:") for c in scorer.components)
    # An Argo retry of the step judges the version this run registered, not a new one.
    assert step_retrain(ctx, collect) == output and len(ctx.registry.versions()) == 2


@pytest.mark.parametrize(
    ("drawn", "min_confidence", "kept"),
    [
        (
            Drawn("a", NOW - timedelta(minutes=5), 3, confidence=0.99),
            0.99,
            True,
        ),  # at the threshold
        (Drawn("a", NOW - timedelta(minutes=5), 3, confidence=0.985), 0.99, False),
        (
            Drawn("a", NOW - timedelta(minutes=5), 3, true_label=5, confidence=1.0),
            0.99,
            False,
        ),  # people labelled it
        (
            Drawn("a", NOW - timedelta(minutes=5), 3, track="canary", version="2", confidence=1.0),
            0.99,
            False,
        ),
        (
            Drawn("a", NOW - timedelta(minutes=5), 3, version="0", confidence=1.0),
            0.99,
            False,
        ),  # another version's
        (Drawn("a", NOW - timedelta(minutes=5), 3, confidence=1.0), None, False),  # off
    ],
)
def test_pseudo_labels_are_the_champions_confident_unlabelled_answers(
    ctx, drawn, min_confidence, kept
):
    traffic(ctx, [drawn])
    collect = collected(ctx)  # joins the feedback into the labelled dataset
    window = ctx.window(collect.since, collect.until)
    rows = pseudo_label_rows(window.predictions, window.labelled, "1", min_confidence)
    assert rows["label"].tolist() == ([3] if kept else [])


# -- canary ---------------------------------------------------------------------------------


def retrain_output(passed: bool) -> RetrainOutput:
    return RetrainOutput(
        challenger="2",
        mlflow_run_id="run-2",
        mnist_test_accuracy=0.99,
        holdout_accuracy=0.9,
        gate_passed=passed,
        gate_reasons=("gate",),
        train_samples=30,
        holdout_samples=10,
    )


def test_canary_serves_the_challenger_at_the_configured_weight(ctx):
    assert ctx.registry.add(untrained_net(1)).version == "2"
    output = step_canary(ctx, retrain_output(passed=True))
    assert output == CanaryOutput(canary="2", weight=ctx.decisions.new_canary_weight)
    assert ctx.rollout.applied == [RoutingState("1", "2", ctx.decisions.new_canary_weight)]
    assert ctx.registry.aliases == {CHAMPION_ALIAS: "1", CHALLENGER_ALIAS: "2"}


# -- analyse --------------------------------------------------------------------------------


class Answers(nn.Module):
    """A classifier that answers one digit, whatever the image: its right and wrong
    answers on a test's images are known."""

    def __init__(self, digit: int) -> None:
        super().__init__()
        self.digit = digit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.full((len(x), 10), -10.0)
        logits[:, self.digit] = 10.0
        return logits


@pytest.mark.parametrize(
    ("champion_says", "challenger_says", "action", "serving", "champion"),
    [
        (5, 3, "promote", RoutingState("2"), "2"),  # only the challenger is right
        (3, 5, "rollback", RoutingState("1"), "1"),  # only the champion is right
        (3, 3, "wait", RoutingState("1", "2", 20), "1"),  # no discordant image
    ],
)
def test_analyse_weighs_both_models_on_the_same_labelled_images(
    ctx, champion_says, challenger_says, action, serving, champion
):
    ctx.registry.nets["1"] = Answers(champion_says)
    ctx.registry.add(Answers(challenger_says))
    ctx.registry.set_alias(CHALLENGER_ALIAS, "2")
    ctx.rollout = FakeRollout(RoutingState("1", "2", 20))
    start = NOW - timedelta(hours=1)
    # Every image is a 3; each track logged the answer its model gives, 8 on the canary.
    drawn = [
        Drawn(
            f"p{i:03d}",
            start + timedelta(seconds=i),
            label=challenger_says if i % 5 == 0 else champion_says,
            true_label=3,
            track="canary" if i % 5 == 0 else "stable",
            version="2" if i % 5 == 0 else "1",
        )
        for i in range(40)
    ]
    # Answers of an older version, and before the canary's first answer, do not count.
    traffic(ctx, [Drawn("old", start - timedelta(minutes=1), 5, 3, version="0"), *drawn])
    output = step_analyse(ctx, collected(ctx))
    assert output.action == action and output.reasons
    assert (output.canary_version, output.stable_version) == ("2", serving.stable_model)
    assert ctx.rollout.state == serving
    assert ctx.rollout.applied == ([] if action == "wait" else [serving])
    assert ctx.registry.alias_version(CHAMPION_ALIAS) == champion
    assert ctx.registry.alias_version(CHALLENGER_ALIAS) == ("2" if action == "wait" else None)
    assert output.details["labelled"] == 40 and output.details["canary_labelled"] == 8
    discordant = 0 if champion_says == challenger_says else 40
    assert output.details["for_challenger"] + output.details["for_champion"] == discordant


def test_analyse_reads_only_from_the_challengers_training_cutoff(ctx):
    """It runs every loop while a canary serves: its reads start where the challenger's
    training data ended, not at the champion's (here the epoch, days of traffic before)."""
    ctx.registry.nets["1"] = Answers(5)
    cutoff = NOW - timedelta(hours=1, minutes=1)
    trained_on = {"training_data": json.dumps({"feedback_until": cutoff.isoformat()})}
    ctx.registry.add(Answers(3), trained_on)
    ctx.registry.set_alias(CHALLENGER_ALIAS, "2")
    ctx.rollout = FakeRollout(RoutingState("1", "2", 20))
    start = NOW - timedelta(hours=1)
    drawn = [
        Drawn(f"p{i:03d}", start + timedelta(seconds=i), 3 if i % 5 == 0 else 5, 3,
              track="canary" if i % 5 == 0 else "stable", version="2" if i % 5 == 0 else "1")
        for i in range(40)
    ]  # fmt: skip
    older = [Drawn(f"o{i}", cutoff - timedelta(days=3, minutes=i), 5, 3) for i in range(5)]
    traffic(ctx, older + drawn)
    collect = collected(ctx)
    output = step_analyse(ctx, collect)
    assert canary_since(ctx, collect) == cutoff
    assert sorted(since for since, _ in ctx._windows) == [EPOCH, cutoff]
    assert output.details["labelled"] == 40 and output.details["canary_labelled"] == 8
    assert output.action == "promote"


# -- finish ---------------------------------------------------------------------------------


def analyse_output(action: str) -> AnalyseOutput:
    return AnalyseOutput(
        action=action, reasons=("evidence",), canary_version="2", stable_version="1"
    )


@pytest.mark.parametrize(
    ("outputs", "outcome", "reasons"),
    [
        (RunOutputs(decide=DecideOutput(retrain=False, reasons=("calm",))), "no change", ("calm",)),
        (
            RunOutputs(
                decide=DecideOutput(retrain=True, reasons=("drift",)),
                retrain=retrain_output(False),
            ),
            "challenger v2 failed the gate",
            ("gate",),
        ),
        (
            RunOutputs(
                decide=DecideOutput(retrain=True, reasons=("drift",)),
                retrain=retrain_output(True),
                canary=CanaryOutput(canary="2", weight=20),
            ),
            "canary v2 at 20 %",
            ("drift", "gate"),
        ),
        (RunOutputs(analyse=analyse_output("promote")), "promoted v2", ("evidence",)),
        (RunOutputs(analyse=analyse_output("rollback")), "rolled back v2", ("evidence",)),
        (RunOutputs(analyse=analyse_output("wait")), "canary v2 still being judged", ("evidence",)),
    ],
)
def test_summarise(outputs, outcome, reasons):
    summary = summarise("run-1", outputs)
    assert (summary.outcome, summary.reasons) == (outcome, reasons)
    assert summary.steps == outputs.ran
    assert summary.challenger == (outputs.retrain.challenger if outputs.retrain else None)


REPORT = "reports/run-1/drift_report.html"


def test_finish_stores_the_summary_logs_it_and_tells_the_webhook(ctx, monkeypatch):
    logged, posted = [], []
    monkeypatch.setattr("pipelines.steps.finish._log_to_mlflow", lambda *args: logged.append(args))

    class Answer:
        def raise_for_status(self) -> None: ...

    def post(url: str, json: dict[str, str], timeout: float) -> Answer:
        posted.append((url, json))
        return Answer()

    monkeypatch.setattr("pipelines.notify.httpx.post", post)
    ctx.loop = ctx.loop.model_copy(update={"webhook_url": SecretStr("https://hooks.example/loop")})
    outputs = RunOutputs(
        collect=collect_output(40),
        quality=quality_output(40, 30),
        drift=DriftOutput(drift_detected=True, drift_score=0.5, report=REPORT),
        decide=DecideOutput(retrain=False, reasons=("calm",)),
    )
    summary = finish(ctx, outputs)
    assert summary.notified is True
    assert ctx.read(Summary) == summary.model_copy(update={"notified": None})
    assert (summary.drift_detected, summary.drift_score) == (True, 0.5)
    assert (summary.live_accuracy, summary.labelled) == (0.75, 40)
    assert summary.steps == ("collect", "quality", "drift", "decide")
    ((_, logged_summary, logged_outputs),) = logged
    assert logged_summary.outcome == "no change" and logged_outputs == outputs
    ((url, body),) = posted
    assert url == "https://hooks.example/loop"
    assert "run-1: no change" in body["text"] and REPORT in body["text"]


# -- compact --------------------------------------------------------------------------------


def test_compact_merges_the_closed_hours_and_every_step_reads_the_same(ctx):
    traffic(ctx, labelled("s", 60, 45, "stable", "1"))  # in the hour before NOW: closed
    before = collected(ctx).counts
    ctx.now = NOW + timedelta(minutes=10)  # the hour has settled
    output = step_compact(ctx)
    assert output.partitions == {"predictions": 1, "feedback": 1, "labelled": 1}
    assert output.files_in["feedback"] == 60 and output.rows["feedback"] == 60
    for prefix in ("predictions/", "feedback/", "labelled/"):
        names = [key.rsplit("/", 1)[-1] for key in ctx.store.list(prefix)]
        assert len(names) == 1 and names[0].startswith("compacted-"), names
    assert read_window(ctx.store, EPOCH, NOW).counts == before
    assert step_compact(ctx).partitions == {}  # nothing left to do: idempotent


# -- the in-process runner ------------------------------------------------------------------


def test_run_once_judges_a_canary_without_drift_or_retraining(ctx, monkeypatch):
    """While a canary is judged, the local runner skips drift, decide, retrain and canary
    (as Argo does, tests/unit/test_workflows.py) and the run ends in finish."""
    monkeypatch.setattr("pipelines.steps.finish._log_to_mlflow", lambda *args: None)
    ctx.registry.nets["1"] = Answers(5)  # stable's answers: all 5, all corrected to 3
    ctx.registry.add(Answers(3))
    ctx.rollout = FakeRollout(RoutingState("1", "2", 20))
    traffic(ctx, [*labelled("c", 60, 60, "canary", "2"), *labelled("s", 60, 0, "stable", "1")])
    console = Console(file=io.StringIO(), width=200)
    summary = run_once(ctx, console)
    assert summary["outcome"] == "promoted v2" and summary["steps"] == [
        "collect",
        "quality",
        "analyse",
        "compact",
    ]
    assert ctx.read(Summary).outcome == "promoted v2"
    assert ctx.read(DriftOutput) is None and ctx.read(AnalyseOutput).action == "promote"
    printed = console.file.getvalue()
    assert "120 predictions, 120 labelled (0 pending, 0 orphaned); stable v1, canary v2" in printed
    assert "120 answers, 60 confirmed, 60 corrected (labelled accuracy 0.500)" in printed
    for skipped in ("drift", "decide", "retrain", "canary"):
        assert re.search(rf"{skipped} +skipped", printed), skipped

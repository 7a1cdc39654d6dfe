"""The drift step: unshifted MNIST passes, thick markers are caught, the report renders."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from digitloop_bench.shifts import SHIFTS, in_distribution, make_shift
from typer.testing import CliRunner

from contracts.errors import DatasetError
from contracts.records import FeedbackRecord, PredictionRecord
from model.registry import ModelVersionInfo
from model.settings import ModelSettings
from model.train import TrainConfig, train
from pipelines.cli import drift_app
from pipelines.drift.adapted import (
    TrainingRange,
    adapted_reference_path,
    adapted_rows,
    mixture,
    mixture_grid,
    training_range,
)
from pipelines.drift.detect import (
    DriftSettings,
    WindowTooSmallError,
    adapted_reference,
    check_drift,
    column_tests,
    combine,
    detect_drift,
    detect_drift_adapted,
    model_reference,
)
from pipelines.drift.features import CLASS_COLUMN, EmbeddingSummary, featurise, image_features
from pipelines.drift.reference import (
    Reference,
    ReferenceSpec,
    load_or_build_reference,
    load_reference,
    mnist_reference,
    reference_path,
    save_reference,
    split_indices,
)
from pipelines.outputs import CollectCounts, CollectOutput
from pipelines.settings import LoopSettings
from pipelines.steps.context import LoopContext
from pipelines.steps.drift import step_drift
from pipelines.steps.labelling import advance
from services.store.backends import LocalStore, StoreSettings
from services.store.writers import FeedbackWriter, PredictionLog

# A small reference keeps the tests fast; the p-values stay valid at any size.
SPEC = ReferenceSpec(size=2000, seed=0, n_components=4)
WINDOW = 200


@pytest.fixture(scope="session")
def net(mnist):
    rng = np.random.default_rng(0)
    idx = rng.choice(len(mnist.x_train), 3000, replace=False)
    config = TrainConfig(epochs=1, batch_size=64, augment=False, seed=5)
    return train(mnist.x_train[idx], mnist.y_train[idx].astype(np.int64), config).net


@pytest.fixture(scope="session")
def reference(net, mnist) -> Reference:
    return mnist_reference(net, mnist.x_test, SPEC, model_version="7")


@pytest.fixture(scope="session")
def holdout(mnist) -> np.ndarray:
    return split_indices(len(mnist.x_test), SPEC.size, SPEC.seed)[1]


@pytest.fixture(scope="session")
def settings() -> DriftSettings:
    return DriftSettings(_env_file=None)


@pytest.fixture(scope="session")
def thick_window(mnist, holdout):
    idx = np.random.default_rng(2).choice(holdout, WINDOW, replace=False)
    return make_shift("thick", mnist.x_test[idx], mnist.y_test[idx], seed=2)


@pytest.fixture(scope="session")
def thick_result(net, reference, thick_window, settings):
    return detect_drift(net, thick_window[0], reference, settings)


def test_unshifted_mnist_windows_are_not_flagged(net, reference, mnist, holdout, settings):
    # The defaults false-alarm on about 2 % of such windows (digitloop_bench.drift), so
    # one of three may be flagged by chance on some machine; two would mean a bad default.
    rng = np.random.default_rng(1)
    results = []
    for _ in range(3):
        idx = rng.choice(holdout, WINDOW, replace=False)
        x, _ = in_distribution(mnist.x_test[idx], mnist.y_test[idx])
        results.append(detect_drift(net, x, reference, settings))
    flagged = [r.drifted_columns for r in results if r.drift_detected]
    assert len(flagged) <= 1, flagged
    assert results[0].n_current == WINDOW
    assert results[0].n_reference == len(reference.features)


def test_a_window_of_thick_markers_is_flagged(thick_result, settings):
    assert thick_result.drift_detected
    assert thick_result.drift_score >= settings.drift_threshold
    # The stroke itself is what changed.
    assert {"stroke_width", "ink_mass"} <= set(thick_result.drifted_columns)
    width = thick_result.features["stroke_width"]
    assert width.current_mean > width.reference_mean


def test_the_result_carries_every_feature(thick_result, reference, settings):
    assert set(thick_result.features) == set(reference.features.columns)
    for name, feature in thick_result.features.items():
        categorical = name == CLASS_COLUMN
        assert feature.method == ("chisquare" if categorical else "ks")
        assert feature.score_kind == "p_value"
        assert 0.0 <= feature.score <= 1.0
        assert feature.threshold == settings.drift_column_threshold
        assert feature.drifted == (feature.score < feature.threshold)
    share = np.mean([f.drifted for f in thick_result.features.values()])
    assert thick_result.drift_score == pytest.approx(share)
    contract = json.loads(json.dumps(thick_result.as_dict()))
    assert contract["drift_detected"] is True
    assert set(contract["features"]["stroke_width"]) >= {"method", "score", "drifted"}


def test_the_report_renders_as_html_and_json(thick_result):
    files = thick_result.report_files()
    html = files["drift_report.html"].decode()
    assert html.lstrip().lower().startswith("<html") or "<html" in html[:500].lower()
    assert len(html) > 10_000
    document = json.loads(files["drift_report.json"])
    assert document["result"]["drift_detected"] is True
    assert document["evidently"]["metrics"] and document["evidently"]["tests"]


def test_a_window_below_the_minimum_is_refused(net, reference, thick_window, settings):
    with pytest.raises(WindowTooSmallError, match="at least"):
        detect_drift(net, thick_window[0][:10], reference, settings)


def test_thresholds_come_from_the_environment(monkeypatch, net, reference, thick_window):
    monkeypatch.setenv("DIGITLOOP_DRIFT_THRESHOLD", "1.0")
    monkeypatch.setenv("DIGITLOOP_DRIFT_PER_COLUMN_METHOD", '{"entropy": "mannw"}')
    settings = DriftSettings(_env_file=None)
    assert settings.drift_threshold == 1.0
    features = featurise(net, thick_window[0], reference.summary)
    result = check_drift(features, reference, settings)
    assert not result.drift_detected  # not every column moved
    assert result.features["entropy"].method == "mannw"


def test_a_frame_without_the_reference_columns_is_refused(reference, settings):
    frame = reference.features.drop(columns=["stroke_width"]).iloc[:200]
    with pytest.raises(DatasetError, match="stroke_width"):
        check_drift(frame, reference, settings)


def test_the_reference_round_trips_and_is_reused(tmp_path: Path, reference, net, mnist):
    path = save_reference(reference, tmp_path / "ref.npz")
    loaded = load_reference(path)
    np.testing.assert_array_equal(loaded.features.to_numpy(), reference.features.to_numpy())
    assert list(loaded.features.columns) == list(reference.features.columns)
    np.testing.assert_array_equal(loaded.summary.components, reference.summary.components)
    assert loaded.matches(SPEC, "7", None)
    # A matching cache is used as it is; another version's is rebuilt and replaces it.
    same = load_or_build_reference(net, mnist.x_test, path, SPEC, model_version="7")
    assert same.model_version == "7" and len(same.features) == len(reference.features)
    small = ReferenceSpec(size=300, seed=1, n_components=2)
    rebuilt = load_or_build_reference(net, mnist.x_test, path, small, model_version="8")
    assert rebuilt.model_version == "8" and len(rebuilt.features) == 300
    assert load_reference(path).matches(small, "8", None)
    with pytest.raises(DatasetError):
        load_reference(tmp_path / "missing.npz")


def test_every_shift_keeps_the_logged_format(mnist):
    digits, labels = mnist.x_test[:12], mnist.y_test[:12]
    for name in SHIFTS:
        x, y = make_shift(name, digits, labels, seed=0)
        assert x.dtype == np.uint8 and x.shape[1:] == (28, 28), name
        assert len(x) == len(y) > 0, name
        assert np.abs(x.astype(int) - in_distribution(digits, labels)[0].astype(int)).mean() > 1


class FakeRegistry:
    """Stands in for MLflow: the CLI only needs ``load`` and ``settings.data_dir``."""

    def __init__(self, net, data_dir: Path) -> None:
        self.net = net
        self.settings = type("Settings", (), {"data_dir": data_dir})()

    def load(self, ref: str = "champion"):
        info = ModelVersionInfo("digitloop-mnist", "7", ["champion"], {}, "run-7")
        return self.net, info


@pytest.fixture
def cli_env(monkeypatch, tmp_path: Path, net, reference, mnist_path: Path) -> Path:
    monkeypatch.setenv("DIGITLOOP_MNIST_PATH", str(mnist_path))
    monkeypatch.setenv("DIGITLOOP_DRIFT_REFERENCE_SIZE", str(SPEC.size))
    monkeypatch.setattr("model.registry.Registry", lambda: FakeRegistry(net, tmp_path / "data"))
    # The reference the CLI would build for version 7, cached where it looks for it.
    cached = dataclasses.replace(reference, model_run_id="run-7")
    save_reference(cached, reference_path(tmp_path / "data", "digitloop-mnist", "7"))
    return tmp_path


def test_the_cli_prints_the_json_contract_for_a_shifted_file(cli_env: Path, thick_window):
    data = cli_env / "thick.npz"
    np.savez(data, x=thick_window[0])  # no labels: y is optional
    reports = cli_env / "reports"
    result = CliRunner().invoke(
        drift_app, ["check", "--data", str(data), "--json", "--report-dir", str(reports)]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["drift_detected"] is True
    assert isinstance(payload["drift_score"], float)
    assert payload["features"]["stroke_width"]["drifted"] is True
    assert payload["model_version"] == "7"
    assert (reports / "drift_report.html").stat().st_size > 10_000


def test_the_cli_refuses_a_bad_file_with_one_error_line(cli_env: Path):
    bad = cli_env / "bad.npz"
    np.savez(bad, x=np.zeros((5, 32, 32), np.uint8))
    result = CliRunner().invoke(drift_app, ["check", "--data", str(bad), "--json"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "error:" in result.stderr and "(N, 28, 28)" in result.stderr


# -- after a promotion: the adapted reference and the rule over mixes -----------------------


def frame_with_shifted(columns: int, shifted: int, n: int, seed: int) -> pd.DataFrame:
    """Normal numerical columns and a uniform class column; the first ``shifted`` moved by 3."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({f"x{j}": rng.normal(3.0 * (j < shifted), 1.0, n) for j in range(columns)})
    frame[CLASS_COLUMN] = rng.integers(0, 10, n)
    return frame


def synthetic_reference(features: pd.DataFrame) -> Reference:
    summary = EmbeddingSummary(
        np.zeros(2, np.float32), np.zeros((0, 2), np.float32), np.zeros((1, 2), np.float32)
    )
    return Reference(features=features, summary=summary, spec=SPEC)


@pytest.mark.parametrize(
    ("threshold", "detected"), [(0.25, True), (0.2500001, False), (0.24, True)]
)
def test_a_window_drifts_when_its_share_of_drifted_columns_reaches_the_threshold(
    threshold, detected
):
    # One of four columns moved: a share of exactly 0.25, at the threshold's boundary.
    reference = frame_with_shifted(3, 0, 2000, seed=0)
    window = frame_with_shifted(3, 1, 200, seed=1)
    settings = DriftSettings(_env_file=None, drift_threshold=threshold, drift_window_min=10)
    tests = column_tests(list(reference.columns), settings)
    verdict = tests.check(tests.matrix(window), tests.matrix(reference))
    assert verdict.drift_score == 0.25
    assert list(verdict.drifted) == [True, False, False, False]
    assert verdict.drift_detected is detected
    # The direct tests and Evidently's report (the drift step's verdict) agree.
    result = check_drift(window, synthetic_reference(reference), settings)
    assert result.drift_detected is detected and result.drift_score == 0.25
    np.testing.assert_allclose(
        verdict.scores, [result.features[c].score for c in reference.columns]
    )


def test_the_rule_over_references_is_drifted_only_against_every_one():
    # One reference: its own verdict and score.
    assert combine([True], [0.2]) == (True, 0.2, 0)
    assert combine([False], [0.0]) == (False, 0.0, 0)
    # Drifted against both: drifted, scored by the nearer one.
    assert combine([True, True], [0.4, 0.2]) == (True, 0.2, 1)
    # Like either population: not drifted, whichever it is like.
    assert combine([True, False], [0.8, 0.0]) == (False, 0.0, 1)
    assert combine([False, True], [0.0667, 0.8]) == (False, 0.0667, 0)
    # A tie goes to the first reference (MNIST).
    assert combine([True, True, True], [0.2, 0.2, 0.3]) == (True, 0.2, 0)
    with pytest.raises(ValueError):
        combine([], [])
    with pytest.raises(ValueError):
        combine([True], [0.1, 0.2])


def test_mixes_run_from_mnist_alone_to_the_adapted_traffic_alone():
    assert mixture_grid(1) == (0.0, 1.0)
    assert mixture_grid(10) == tuple(i / 10 for i in range(11))
    with pytest.raises(ValueError):
        mixture_grid(0)
    mnist = pd.DataFrame({"x": np.arange(5000.0), "source": "mnist"})
    adapted = pd.DataFrame({"x": -np.arange(1.0, 401.0), "source": "adapted"})
    assert mixture(mnist, adapted, 0.0)["source"].eq("mnist").sum() == 5000
    assert set(mixture(mnist, adapted, 0.0)["x"]) == set(mnist["x"])
    assert mixture(mnist, adapted, 1.0)["source"].eq("adapted").sum() == 400
    assert len(mixture(mnist, adapted, 1.0)) == 400
    # As many rows as the share allows: every adapted row, and as many MNIST ones.
    half = mixture(mnist, adapted, 0.5)["source"].value_counts()
    assert (half["mnist"], half["adapted"]) == (400, 400)
    tenth = mixture(mnist, adapted, 0.1)["source"].value_counts()
    assert (tenth["mnist"], tenth["adapted"]) == (3600, 400)
    # MNIST rows are drawn at random, not its first ones (its halves are different writers).
    assert mixture(mnist, adapted, 0.5).query("source == 'mnist'")["x"].max() > 2500
    with pytest.raises(ValueError):
        mixture(mnist, adapted, 1.5)


def version(tags: dict[str, str] | None = None, number: str = "2") -> ModelVersionInfo:
    return ModelVersionInfo("digitloop-mnist", number, ["champion"], tags or {}, f"run-{number}")


def fine_tuned_tags(since: datetime, until: datetime, trained: int, held_out: int) -> dict:
    """The tags the retrain step writes (pipelines/steps/retrain.py)."""
    data = {
        "mnist_train": 10000,
        "feedback": trained,
        "feedback_holdout": held_out,
        "feedback_since": since.isoformat(),
        "feedback_until": until.isoformat(),
        "loop_run": "run-1",
    }
    return {"training_data": json.dumps(data), "parent_version": "1"}


T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_the_training_range_comes_from_the_retrain_steps_tags():
    assert training_range(version()) is None  # trained on MNIST only
    no_feedback = {"training_data": json.dumps({"feedback": 0, "feedback_until": None})}
    assert training_range(version(no_feedback)) is None
    until = T0 + timedelta(hours=1)
    trained = training_range(version(fine_tuned_tags(T0, until, 300, 100)))
    assert trained == TrainingRange(T0, until, 300)
    assert trained.end > until and trained.source.startswith("traffic 2026-03-01T09:00:00")


def test_the_adapted_traffic_prefers_what_the_version_was_not_trained_on():
    ts = [T0 + timedelta(seconds=i) for i in range(10)]
    predictions = pd.DataFrame({"prediction_id": [f"p{i}" for i in range(10)], "ts": ts})
    # p0..p5 labelled in this feedback order; the oldest 4 by feedback time were trained on.
    order = [1, 0, 3, 2, 5, 4]
    labelled = pd.DataFrame(
        {
            "prediction_id": [f"p{i}" for i in order],
            "feedback_ts": [T0 + timedelta(seconds=20 + k) for k in range(6)],
        }
    )
    trained = TrainingRange(T0, ts[8], trained=4)  # p9 came after the range

    def rows(size: int) -> list[str]:
        return list(adapted_rows(predictions, labelled, trained, size)["prediction_id"])

    assert rows(2) == ["p7", "p8"]  # the newest
    assert rows(5) == ["p4", "p5", "p6", "p7", "p8"]  # every one not trained on
    # Short of those, the newest trained on fill up, in time order.
    assert rows(7) == ["p2", "p3", "p4", "p5", "p6", "p7", "p8"]
    assert rows(100) == [f"p{i}" for i in range(9)]


def test_the_adapted_traffic_takes_what_it_served_as_a_canary_first():
    """Read up to the first window checked, the traffic after the training range (all of it
    unseen) comes first: the range also holds the traffic from before the drift."""
    ts = [T0 + timedelta(seconds=i) for i in range(10)]
    predictions = pd.DataFrame({"prediction_id": [f"p{i}" for i in range(10)], "ts": ts})
    labelled = pd.DataFrame({"prediction_id": ["p0", "p1"], "feedback_ts": [ts[2], ts[3]]})
    trained = TrainingRange(T0, ts[3], trained=2)  # p0..p3; p4..p7 the canary's; p8 checked

    def rows(size: int) -> list[str]:
        return list(adapted_rows(predictions, labelled, trained, size, ts[8])["prediction_id"])

    assert rows(3) == ["p5", "p6", "p7"]  # the canary's newest, never the window checked
    assert rows(6) == ["p2", "p3", "p4", "p5", "p6", "p7"]
    assert rows(100) == [f"p{i}" for i in range(8)]


@pytest.fixture(scope="session")
def segments(mnist, holdout):
    """Drawings of a population far from MNIST: three disjoint sets of it."""
    idx = np.random.default_rng(3).choice(holdout, 1200, replace=False)
    x, _ = make_shift("segments", mnist.x_test[idx], mnist.y_test[idx], seed=3)
    return x[:400], x[400:800], x[800:1200]


def test_a_fine_tuned_version_is_judged_against_every_mix_of_its_populations(
    tmp_path, net, reference, segments, mnist, holdout, thick_window
):
    settings = DriftSettings(_env_file=None, drift_reference_size=SPEC.size)
    adapted_images, fresh, more = segments
    calls = []

    def traffic(trained: TrainingRange, size: int) -> np.ndarray:
        calls.append((trained, size))
        return adapted_images[-size:]

    info = version(fine_tuned_tags(T0, T0 + timedelta(hours=1), 300, 100), number="7")
    adapted = adapted_reference(net, info, reference, traffic, tmp_path, settings)
    assert adapted is not None and len(adapted.features) == settings.drift_adapted_reference_size
    assert adapted.source.startswith("traffic 2026-03-01T09:00:00")
    # Built once, in the MNIST reference's coordinates, then read from its cache.
    assert adapted.summary.fingerprint() == reference.summary.fingerprint()
    assert adapted_reference(net, info, reference, traffic, tmp_path, settings) is not None
    assert len(calls) == 1
    assert adapted_reference_path(tmp_path, "digitloop-mnist", "7").is_file()

    # Fresh drawings of the adapted population: drifted from MNIST, not from the champion's.
    population = detect_drift_adapted(net, fresh[:WINDOW], reference, adapted, settings)
    assert population.mnist.drift_detected
    assert not population.drift_detected
    assert population.nearest_share > 0.5
    assert set(population.scores) == set(mixture_grid(settings.drift_mixture_steps))
    assert population.drift_score == min(population.scores.values())
    # Both populations at once: each half alone drifts from the other reference.
    idx = np.random.default_rng(4).choice(holdout, WINDOW // 2, replace=False)
    x_mnist, _ = in_distribution(mnist.x_test[idx], mnist.y_test[idx])
    both = detect_drift_adapted(
        net, np.concatenate([x_mnist, more[: WINDOW // 2]]), reference, adapted, settings
    )
    assert both.mnist.drift_detected and both.scores[1.0] >= settings.drift_threshold
    assert not both.drift_detected and 0.0 < both.nearest_share < 1.0
    # A population it was never adapted to is still caught.
    thick = detect_drift_adapted(net, thick_window[0], reference, adapted, settings)
    assert thick.drift_detected and "stroke_width" in thick.drifted_columns
    files = thick.report_files()
    assert set(files) == {
        "drift_report.html",
        "drift_report.json",
        "drift_report_mnist.html",
        "drift_report_mnist.json",
    }
    document = json.loads(files["drift_report.json"])["result"]
    assert document["drift_detected"] is True and document["mnist"]["drift_detected"] is True
    assert len(document["mixture_scores"]) == settings.drift_mixture_steps + 1


def test_a_version_without_feedback_or_traffic_keeps_mnist_alone(tmp_path, net, reference):
    settings = DriftSettings(_env_file=None)

    def traffic(trained: TrainingRange, size: int) -> np.ndarray:
        raise AssertionError("a version trained on MNIST only reads no traffic")

    assert adapted_reference(net, version(), reference, traffic, tmp_path, settings) is None
    tags = fine_tuned_tags(T0, T0 + timedelta(hours=1), 300, 100)
    off = DriftSettings(_env_file=None, drift_adapted_reference_size=0)
    assert adapted_reference(net, version(tags), reference, traffic, tmp_path, off) is None
    # Too little traffic left in its range: MNIST alone, and nothing cached, to try again.
    scarce = adapted_reference(
        net,
        version(tags),
        reference,
        lambda r, n: np.zeros((50, 28, 28), np.uint8),
        tmp_path,
        settings,
    )
    assert scarce is None
    assert not adapted_reference_path(tmp_path, "digitloop-mnist", "2").exists()


# -- the drift step with a fine-tuned champion ----------------------------------------------


@dataclass
class Versions:
    """The registry as the drift step uses it: ``load`` a version, its ``novelty`` scorer
    (none here: versions registered before scorers, judged by Evidently alone)."""

    nets: dict[str, tuple[object, ModelVersionInfo]]

    def load(self, ref: str = "champion"):
        return self.nets[ref]

    def novelty(self, info: ModelVersionInfo) -> None:
        return None


def log_drawings(store: LocalStore, spool: Path, drawings) -> None:
    """Predictions (and feedback where a label is given) through the service's writers."""
    log = PredictionLog(store, pod="test")
    writer = FeedbackWriter(store, spool)
    for prediction_id, ts, image, feedback_ts in drawings:
        log.append(
            PredictionRecord(
                prediction_id=prediction_id,
                ts=ts,
                model_version="1",
                track="stable",
                image=image,
                probabilities=np.full(10, 0.1, np.float32),
                label=0,
                latency_ms=1.0,
            )
        )
        if feedback_ts is not None:
            writer.write(FeedbackRecord(prediction_id, 0, feedback_ts))
    log.flush()


@pytest.fixture
def adapted_loop(tmp_path, net, mnist, segments):
    """A store holding the traffic v2 was fine-tuned on, then a window of the same population.

    In v2's range: 600 drawings, two in three labelled; v2 trained on the oldest 300 labels
    and held out the newest 100. The window after it: 400 fresh drawings.
    """
    adapted_images, fresh, more = segments
    images = np.concatenate([adapted_images, more[:200]])
    drawings, trained_ids = [], []
    for i, image in enumerate(images):
        ts = T0 + timedelta(seconds=i)
        labelled = i % 3 != 2
        drawings.append(
            (f"r{i:04d}", ts, image, ts + timedelta(milliseconds=500) if labelled else None)
        )
        if labelled and len(trained_ids) < 300:
            trained_ids.append(f"r{i:04d}")
    feedback = [d[3] for d in drawings if d[3] is not None]
    until = feedback[-1]
    now = until + timedelta(hours=1)
    window = [(f"w{i:04d}", until + timedelta(seconds=i + 1), x, None) for i, x in enumerate(fresh)]
    store = LocalStore(tmp_path / "store")
    log_drawings(store, tmp_path / "spool", drawings + window)
    advance(store, now)  # collect's labelling: the feedback joins the labelled dataset
    tags = fine_tuned_tags(feedback[0], until, 300, len(feedback) - 300)
    ctx = LoopContext(
        run_id="run-2",
        loop=LoopSettings(_env_file=None),
        drift=DriftSettings(_env_file=None, drift_reference_size=SPEC.size),
        model=ModelSettings(_env_file=None, data_dir=tmp_path / "data"),
        store_settings=StoreSettings(_env_file=None, data_dir=tmp_path / "data"),
        now=now,
    )
    ctx.store = store
    ctx.mnist = mnist
    ctx.registry = Versions({"1": (net, version(number="1")), "2": (net, version(tags))})
    # Not trained on, before the window: the held-out labels and the unlabelled drawings,
    # the last of them logged after the range (300), filled up to 400 with the newest
    # trained on.
    untrained = [d[2] for d in drawings if d[0] not in trained_ids]
    filler = [d[2] for d in drawings if d[0] in trained_ids][len(untrained) - 400 :]
    assert (len(untrained), len(filler)) == (300, 100)
    expected = np.stack(filler + untrained)
    collect = {
        "since": until,
        "until": now,
        "counts": CollectCounts(predictions=400, feedback=0, joined=0, pending=0, orphaned=0),
        "canary_active": False,
    }
    return ctx, collect, expected


def test_the_drift_step_judges_a_fine_tuned_champion_against_its_adapted_traffic(adapted_loop):
    ctx, collect, expected = adapted_loop
    output = step_drift(ctx, CollectOutput(**collect, stable_version="2"))
    assert output.skipped is None and output.n_current == 400
    assert not output.drift_detected, output
    assert output.mnist_drift_score >= ctx.drift.drift_threshold  # MNIST alone would retrain
    assert output.nearest_adapted_share > 0.5
    assert len(output.mixture_scores) == ctx.drift.drift_mixture_steps + 1
    assert output.drift_score == min(output.mixture_scores.values())
    # Its reference: the drawings of its range it was not trained on, filled up to 400 with
    # the newest it was trained on.
    path = adapted_reference_path(ctx.model.data_dir, "digitloop-mnist", "2")
    cached = load_reference(path)
    assert cached.model_version == "2" and len(cached.features) == 400
    np.testing.assert_array_equal(
        np.sort(cached.features["ink_mass"]), np.sort(image_features(expected)["ink_mass"])
    )
    keys = set(ctx.store.list("reports/run-2/"))
    assert {"reports/run-2/drift_report.html", "reports/run-2/drift_report_mnist.html"} <= keys
    assert output.report == "reports/run-2/drift_report.html"
    # The geometry test is fitted on MNIST: the traffic it was adapted to would stay unusual.
    assert output.geometry_detected is None and "reports/run-2/geometry_report.json" not in keys


def test_the_drift_step_keeps_mnist_alone_for_a_champion_trained_on_mnist(adapted_loop):
    ctx, collect, _ = adapted_loop
    output = step_drift(ctx, CollectOutput(**collect, stable_version="1"))
    assert output.drift_detected  # the population the champion was never adapted to
    assert output.nearest_adapted_share is None and output.mnist_drift_score is None
    assert output.mixture_scores == {}
    assert not (ctx.model.data_dir / "references" / "digitloop-mnist-v1-adapted.npz").exists()
    # Exactly today's check: the MNIST reference alone, on the newest drift_window drawings.
    window = ctx.window(collect["since"], collect["until"])
    net, info = ctx.registry.load("1")
    mnist_only = detect_drift(
        net,
        window.images(window.predictions.tail(ctx.loop.drift_window)),
        model_reference(net, info, ctx.mnist.x_test, ctx.model.data_dir, ctx.drift),
        ctx.drift,
    )
    assert (output.drift_detected, output.drift_score) == (
        mnist_only.drift_detected,
        mnist_only.drift_score,
    )
    assert output.drifted_columns == tuple(mnist_only.drifted_columns)
    assert set(ctx.store.list("reports/run-2/")) == {
        "reports/run-2/drift_report.html",
        "reports/run-2/drift_report.json",
        "reports/run-2/geometry_report.json",
    }
    assert output.geometry_detected is not None

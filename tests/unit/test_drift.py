"""The drift step: unshifted MNIST passes, thick markers are caught, the report renders."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from digitloop_bench.shifts import SHIFTS, in_distribution, make_shift
from typer.testing import CliRunner

from contracts.errors import DatasetError
from model.registry import ModelVersionInfo
from model.train import TrainConfig, train
from pipelines.cli import drift_app
from pipelines.drift.detect import DriftSettings, WindowTooSmallError, check_drift, detect_drift
from pipelines.drift.features import CLASS_COLUMN, featurise
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

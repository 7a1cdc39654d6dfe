"""MLflow tracking and registry: embedded store and a real ``mlflow server`` on loopback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contracts.errors import ModelNotFoundError
from model.calibration import calibrate
from model.evaluate import evaluate
from model.network import predict_proba
from model.registry import Registry, TrainingRecord
from model.settings import ModelSettings
from model.train import TrainConfig, fine_tune, train
from tests.conftest import tiny_split

pytestmark = pytest.mark.integration

CONFIG = TrainConfig(epochs=1, batch_size=64, augment=False, seed=5)


def record_for(result, x_test, y_test, **extra) -> TrainingRecord:
    training_data = extra.pop("training_data")
    return TrainingRecord.of(
        CONFIG, result, evaluate(result.net, x_test, y_test), training_data, **extra
    )


@pytest.fixture(params=["embedded", "server"])
def registry(request, data_dir, tmp_path) -> Registry:
    if request.param == "server":
        url = request.getfixturevalue("mlflow_server")
        # Each test gets its own experiment and model name on the shared server.
        name = f"digitloop-test-{request.node.name.replace('[', '-').rstrip(']')}"
        settings = ModelSettings(
            mlflow_tracking_uri=url, registered_model=name, mlflow_experiment=name
        )
    else:
        settings = ModelSettings()
    return Registry(settings)


def test_first_version_is_champion_and_loads_back_identical(registry: Registry, mnist):
    x, y, x_test, y_test = tiny_split(mnist, 1500, 300)
    result = train(x, y, CONFIG)
    info = registry.log_and_register(
        result.net,
        record_for(result, x_test, y_test, training_data={"mnist_train": len(x), "feedback": 0}),
    )

    assert info.version == "1" and info.aliases == ["champion"]
    assert json.loads(info.tags["training_data"]) == {"mnist_train": 1500, "feedback": 0}
    assert float(info.tags["mnist_test_accuracy"]) > 0.5
    assert info.tags["parent_version"] == ""

    expected = predict_proba(result.net, x_test)
    for ref in ("champion", "1", 1):
        net, loaded = registry.load(ref)
        assert loaded.version == "1"
        assert not net.training
        np.testing.assert_allclose(predict_proba(net, x_test), expected, atol=1e-5)

    run = registry.client.get_run(info.run_id)
    assert run.data.metrics["mnist_test_accuracy"] == pytest.approx(
        float(info.tags["mnist_test_accuracy"]), abs=1e-6
    )
    artifacts = {a.path for a in registry.client.list_artifacts(info.run_id)}
    assert {"confusion.png", "training_data.json", "mnist_test_evaluation.json"} <= artifacts

    # The temperature serving divides the logits by, fitted on the held-out evaluation set.
    calibration = calibrate(expected, y_test)
    assert info.temperature == pytest.approx(calibration.temperature, abs=1e-5)
    assert registry.get("champion").tags["temperature"] == info.tags["temperature"]
    assert run.data.metrics["temperature"] == pytest.approx(calibration.temperature)
    assert run.data.metrics["mnist_test_ece"] == pytest.approx(calibration.ece)
    assert run.data.metrics["mnist_test_ece_calibrated"] == pytest.approx(
        calibration.ece_calibrated
    )


def test_fine_tuned_child_is_registered_with_its_parent(registry: Registry, mnist):
    x, y, x_test, y_test = tiny_split(mnist, 1000, 200)
    parent = train(x, y, CONFIG)
    registry.log_and_register(
        parent.net, record_for(parent, x_test, y_test, training_data={"mnist_train": len(x)})
    )
    parent_net, parent_info = registry.load("champion")

    child = fine_tune(parent_net, x, y, x_test[:50], y_test[:50], CONFIG)
    info = registry.log_and_register(
        child.net,
        record_for(
            child,
            x_test,
            y_test,
            parent_version=parent_info.version,
            training_data={"mnist_train": len(x), "feedback": 50, "feedback_window": "test"},
            extra_metrics={"feedback_holdout_accuracy": 0.5},
        ),
    )

    assert info.version == "2"
    assert info.aliases == []  # a new version does not take over: the pipeline decides
    assert info.tags["parent_version"] == "1"
    assert info.tags["feedback_holdout_accuracy"] == "0.500000"
    assert registry.alias_version("champion") == "1"

    registry.set_alias("challenger", "2")
    assert registry.get("challenger").version == "2"
    assert [v.aliases for v in registry.versions()] == [["champion"], ["challenger"]]
    registry.delete_alias("challenger")
    registry.delete_alias("challenger")  # idempotent
    assert registry.alias_version("challenger") is None


def test_unknown_version_or_alias_is_a_clear_error(registry: Registry):
    with pytest.raises(ModelNotFoundError, match="digitloop train"):
        registry.load("champion")
    with pytest.raises(ModelNotFoundError, match="'9'"):
        registry.get("9")

"""A version's ONNX exports (fp32 and int8) are registered with it and are what the servers
run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from model.evaluate import evaluate
from model.export import calibration_digits
from model.registry import ONNX_INT8_TAG, ONNX_TAG, Registry, TrainingRecord
from model.train import TrainConfig, train
from services import inference
from services.inference import Classifier, OnnxForward
from services.settings import ServingSettings
from tests.conftest import tiny_split


def test_a_version_serves_its_registered_export_and_an_older_one_is_exported_at_load(
    data_dir, mnist, monkeypatch
):
    registry = Registry()
    x, y, x_test, y_test = tiny_split(mnist, 300, 200)
    config = TrainConfig(epochs=1, augment=False)
    result = train(x, y, config)
    info = registry.log_and_register(
        result.net, TrainingRecord.of(config, result, evaluate(result.net, x_test, y_test), {})
    )
    stored = registry.onnx(info)
    assert stored is not None and info.tags[ONNX_TAG] == "17"
    # Registered without calibration digits: no int8 export, and the int8 runtime serves
    # the fp32 one.
    assert registry.onnx_int8(info) is None and ONNX_INT8_TAG not in info.tags
    fallback = Classifier.from_registry(info.version, registry, runtime="onnxruntime_int8")
    assert fallback.runtime == "onnxruntime" and fallback.onnx_model == stored
    labels = Classifier.from_registry(info.version, registry, runtime="torch").predict(x_test)

    # Loading runs the stored export: nothing is exported at load.
    with monkeypatch.context() as patch:
        patch.setattr(inference, "export_onnx", lambda net: pytest.fail("exported at load"))
        served = Classifier.from_registry(info.version, registry, runtime="onnxruntime")
    assert served.onnx_model == stored
    np.testing.assert_array_equal(served.predict(x_test).argmax(1), labels.argmax(1))

    # A version registered before the export was logged still serves: exported at load.
    registry.client.delete_model_version_tag(registry.name, info.version, ONNX_TAG)
    older = registry.get(info.version)
    assert registry.onnx(older) is None
    exported = Classifier.from_registry(older.version, registry, runtime="onnxruntime")
    assert exported.onnx_model is None
    np.testing.assert_array_equal(exported.predict(x_test).argmax(1), labels.argmax(1))


def test_a_version_registers_its_int8_export_and_the_servers_run_it_by_default(data_dir, mnist):
    registry = Registry()
    x, y, x_test, y_test = tiny_split(mnist, 300, 200)
    config = TrainConfig(epochs=1, augment=False)
    result = train(x, y, config)
    record = TrainingRecord.of(
        config,
        result,
        evaluate(result.net, x_test, y_test),
        {},
        int8_calibration=calibration_digits(x, 100),
    )
    info = registry.log_and_register(result.net, record)
    int8 = registry.onnx_int8(info)
    assert int8 is not None and info.tags[ONNX_INT8_TAG] == "100"
    ops = {node.op_type for node in onnx.load_from_string(int8).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    # Every server builds its classifier from the registry with the default runtime.
    runtime = ServingSettings().inference_runtime
    assert runtime == "onnxruntime_int8"
    served = Classifier.from_registry(info.version, registry, runtime=runtime)
    assert served.onnx_model == int8
    embeddings, logits = OnnxForward(int8)(x_test)
    answers = served.answer(x_test)
    np.testing.assert_array_equal(answers.probabilities.argmax(1), logits.argmax(1))
    np.testing.assert_array_equal(served.forward(x_test)[0].numpy(), embeddings)

    # The int8 labels are the fp32 export's but for a few.
    fp32 = Classifier.from_registry(info.version, registry, runtime="onnxruntime")
    assert fp32.onnx_model == registry.onnx(info) != int8
    agree = (fp32.predict(x_test).argmax(1) == logits.argmax(1)).mean()
    assert agree >= 0.97, agree


def test_the_int8_export_keeps_its_weights_to_7_bits(mnist):
    """Full-range int8 weights can saturate ONNX Runtime's u8s8 kernels on CPUs without
    VNNI; the registered export quantises them symmetrically into [-64, 64] (reduce_range)."""
    import torch
    from onnx import numpy_helper

    from model.export import export_onnx, quantize_int8
    from model.network import DigitNet

    torch.manual_seed(0)
    int8 = onnx.load_from_string(
        quantize_int8(export_onnx(DigitNet().eval()), calibration_digits(mnist.x_train, 50))
    )
    weights = [
        numpy_helper.to_array(tensor).astype(int)
        for tensor in int8.graph.initializer
        if tensor.data_type == onnx.TensorProto.INT8 and tensor.name.endswith("_quantized")
    ]
    assert len(weights) >= 4  # three convolutions and the dense layers
    assert max(abs(w).max() for w in weights) == 64  # 7 bits, all of them used

"""A network as the ONNX model the service runs: exported once, when its version registers.

The export is logged with the version (``Registry.log_and_register``) and served as is by
every server (``services.inference``), so what was registered is what answers. A version
registered before the export was logged is exported when it loads.

The exporter is torch's TorchScript-based one (``dynamo=False``), deprecated since torch
2.9 but present in the pinned 2.13. Measured against the torch.export-based one
(``dynamo=True``, which also needs the ``onnxscript`` package) on this network: the same
embeddings and logits (within 2e-7), the same ONNX Runtime time per image (172 us for
both), but 4.6 s for a process's first export and 1.4 s for the next ones, against
0.055 s. Every registration pays it, and the test suite registers dozens of versions; the
switch is this one function when a torch upgrade removes the old exporter.

What the servers run by default is the export quantised to int8 (:func:`quantize_int8`),
made when the version registers from the fp32 export and calibrated on the digits it
trained on. Measured on all 10,000 MNIST test digits, one image per call, one thread
(``python -m digitloop_bench.serving.forward``), three runs: 0.57-0.68x the fp32 export's
time, accuracy within 0.02 point, 1-3 labels of 10,000 differing, 0.14-0.17 % of the
novelty flags flipped; TorchScript, channels-last and dynamic int8 were all 3-6x slower
than the fp32 export.
"""

from __future__ import annotations

import io
import logging
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

ONNX_INPUT = "pixels"
ONNX_OUTPUTS = ("embeddings", "logits")
OPSET = 17

# The TorchScript-based exporter keeps its state in globals: two exports at once in one
# process (a reload while the slots' thread loads, two servers in one test) fail.
_EXPORT_LOCK = threading.Lock()


class EmbeddingsAndLogits(nn.Module):
    """The network's two outputs as one module: the novelty score needs the embeddings."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.net.embed(pixels)
        return embeddings, self.net.head(embeddings)


def export_onnx(net: nn.Module) -> bytes:
    """``net`` in eval mode as an ONNX model: input ``pixels`` (N, 1, 28, 28) float 0-255,
    outputs ``embeddings`` (N, hidden) and ``logits`` (N, 10), any N."""
    module = EmbeddingsAndLogits(net).eval()
    buffer = io.BytesIO()
    batch = {0: "n"}
    with _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice (see above)
        torch.onnx.export(
            module,
            (torch.zeros(1, 1, 28, 28),),
            buffer,
            input_names=[ONNX_INPUT],
            output_names=list(ONNX_OUTPUTS),
            dynamic_axes={ONNX_INPUT: batch, **{name: batch for name in ONNX_OUTPUTS}},
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


# Digits the int8 export's activation ranges are calibrated on: the bench's 500 gave the
# figures above.
CALIBRATION_DIGITS = 500


def calibration_digits(
    images: np.ndarray, n: int = CALIBRATION_DIGITS, seed: int = 0
) -> np.ndarray:
    """``n`` of a version's training digits drawn at random, as the service sees them
    (:func:`model.preprocess.preprocess_batch`; empty ones dropped): what
    :func:`quantize_int8` calibrates on."""
    from model.preprocess import preprocess_batch

    rows = np.arange(len(images))
    if len(rows) > n:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
    digits, accepted = preprocess_batch(np.asarray(images)[rows])
    return digits[accepted]


def quantize_int8(model: bytes, calibration: np.ndarray) -> bytes:
    """The fp32 export (:func:`export_onnx`) as int8, with the same input and outputs:
    ONNX Runtime's static quantisation in QDQ form, int8 weights per output channel, uint8
    activations whose ranges are calibrated on ``calibration`` (N, 28, 28) uint8 digits.

    The batch norm after the first dense layer stays fp32: per-channel quantisation has
    no channel axis for its 1-d weights, and leaving it out measured as fast.

    Raises:
        ValueError: no calibration digits.
    """
    if not len(calibration):
        raise ValueError("no digits to calibrate the int8 export on")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    pixels = np.asarray(calibration).astype(np.float32)[:, None]
    batches = iter([{ONNX_INPUT: pixels[i : i + 50]} for i in range(0, len(pixels), 50)])

    class Digits(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(batches, None)

    def static(prepared: Path, int8: Path) -> None:
        import onnx

        nodes = onnx.load(prepared).graph.node
        quantize_static(
            prepared,
            int8,
            Digits(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # 7-bit weights: on x86 CPUs without VNNI, ONNX Runtime's u8s8 kernels add
            # pairs of products in 16 bits, which full-range weights can saturate (its
            # docs). Side by side on the quick model, all 10,000 MNIST test digits: 99.15 %
            # and 4 labels differing from fp32 either way, 98 against 93 us per image.
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=[n.name for n in nodes if n.op_type == "BatchNormalization"],
        )

    return quantized(model, static)


def quantized(model: bytes, quantize: Callable[[Path, Path], None]) -> bytes:
    """``model`` through one of ONNX Runtime's quantisers: ``quantize(prepared, out)``
    reads the model prepared as ONNX Runtime recommends (shapes inferred, graph
    optimised) and writes the quantised one; its files live in a temporary folder."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The quantiser logs every tensor it leaves alone, at INFO, on the root logger.
    disabled = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        with tempfile.TemporaryDirectory(prefix="digitloop-quantize-") as tmp:
            fp32, prepared, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "out.onnx"))
            fp32.write_bytes(model)
            quant_pre_process(str(fp32), str(prepared))
            quantize(prepared, out)
            return out.read_bytes()
    finally:
        logging.disable(disabled)

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
"""

from __future__ import annotations

import io
import threading
import warnings

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

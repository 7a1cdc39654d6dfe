"""One loaded model version and the per-request work: bytes -> 28x28 -> probabilities.

Shared by the BentoML service and the benchmark's baselines, so every server does the
same work per request and a comparison measures only the serving stack.

The forward pass runs in torch or in ONNX Runtime (``DIGITLOOP_INFERENCE_RUNTIME``,
:class:`OnnxForward`) on one thread, both outputs (embeddings and logits) kept: by default
on the version's int8 export as registered (:func:`model.export.quantize_int8`), else on
its fp32 export. Measured on these 2 cores, one image: torch 0.64 ms, ONNX Runtime fp32
0.21 ms (the logits within 4e-6 of torch's, the same labels on all 10,000 MNIST test
digits), int8 0.57-0.68x fp32's time with 1-3 labels of 10,000 differing and 0.14-0.17 %
of the novelty flags flipped (issue 17; ``python -m digitloop_bench.serving.forward``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import NamedTuple, get_args

import numpy as np
import torch
from torch import nn

from contracts.api import MAX_SIDE, TrackInfo
from model.export import ONNX_INPUT, ONNX_OUTPUTS, export_onnx
from model.network import to_tensor
from model.novelty import NoveltyScorer
from model.preprocess import decode_image, to_mnist
from model.registry import ModelVersionInfo, Registry
from services.errors import BadRequest, PayloadTooLarge
from services.settings import Runtime

log = logging.getLogger(__name__)


def image_bytes_to_pixels(data: bytes, max_bytes: int) -> np.ndarray:
    """PNG/JPEG bytes to the 28x28 uint8 digit the network takes.

    Raises:
        PayloadTooLarge: more than ``max_bytes``.
        InvalidImageError / EmptyDrawingError: see :mod:`model.preprocess`.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the image is {len(data)} bytes; at most {max_bytes} accepted")
    return to_mnist(decode_image(data))


def array_to_pixels(values: object) -> np.ndarray:
    """A nested list (28x28 or any HxW grey image, 0-255 or 0-1) to the 28x28 digit."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"pixels must be a rectangular array of numbers ({exc})") from exc
    if array.ndim != 2:
        raise BadRequest(f"pixels must be a 2-D array (HxW), got shape {array.shape}")
    if max(array.shape) > MAX_SIDE:
        raise PayloadTooLarge(f"pixels is {array.shape}; at most {MAX_SIDE}x{MAX_SIDE}")
    return to_mnist(array)


RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)


class Answers(NamedTuple):
    """What :meth:`Classifier.answer` gives for N images, from one forward pass."""

    probabilities: np.ndarray  # (N, 10) float32, calibrated
    novelty: np.ndarray | None  # (N,) float32 scores; None for a version without a scorer
    unusual: np.ndarray  # (N,) bool: above the scorer's threshold (all False without one)


_OUTPUT_NAMES = list(ONNX_OUTPUTS)  # onnxruntime takes a list


class OnnxForward:
    """The exported network run by ONNX Runtime: ``(N, 28, 28) uint8 -> (embeddings, logits)``.

    One intra-op thread (torch's count in this process, which the servers set to 1 per
    worker), sequential execution, no spinning threads, every graph optimisation (batch
    norm folded into the convolutions). The session is made in the process that runs it,
    on first use: a KServe model is pickled to its workers, and a session does not pickle.
    """

    def __init__(self, model: bytes) -> None:
        self.model = model
        self._session = None

    def __getstate__(self) -> dict[str, object]:
        return {"model": self.model, "_session": None}

    def _open(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            self.model, options, providers=["CPUExecutionProvider"]
        )
        return self._session

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._session is None:
            self._open()
        pixels = np.ascontiguousarray(images, dtype=np.float32)[:, None]
        embeddings, logits = self._session.run(_OUTPUT_NAMES, {ONNX_INPUT: pixels})  # type: ignore[union-attr]
        return embeddings, logits


@dataclass
class Classifier:
    """A model version ready to answer (N, 28, 28) uint8 images."""

    net: nn.Module
    version: str
    aliases: list[str] = field(default_factory=list)
    trained_on: dict[str, object] = field(default_factory=dict)
    mnist_test_accuracy: float | None = None
    # The version's calibration (ModelVersionInfo.temperature), read once at load.
    temperature: float = 1.0
    # What runs the forward pass: torch on ``net``, or ONNX Runtime on its fp32 or int8
    # export (``onnx_model``).
    runtime: Runtime = "torch"
    # The version's novelty scorer (model.novelty), read once at load; None for a version
    # registered without one: its answers then carry no novelty.
    novelty: NoveltyScorer | None = None
    # The version's ONNX export as registered (model.export), the int8 one for the
    # ``onnxruntime_int8`` runtime; None: the fp32 export made at load, for a version
    # registered before the export was logged (the int8 one cannot be: it needs the
    # version's training digits).
    onnx_model: bytes | None = field(default=None, repr=False)
    # 1/T as a 0-d tensor: multiplying by it cost 8 us per call where dividing by the
    # Python float cost 20 (a scalar wrapped into a tensor on every request).
    _inverse_temperature: torch.Tensor = field(init=False, repr=False)
    _onnx: OnnxForward | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        self._inverse_temperature = torch.tensor(1.0 / self.temperature, dtype=torch.float32)
        if self.runtime == "onnxruntime_int8" and self.onnx_model is None:
            raise ValueError("the onnxruntime_int8 runtime needs the version's int8 export")
        if self.runtime != "torch":
            self._onnx = OnnxForward(self.onnx_model or export_onnx(self.net.eval()))

    @classmethod
    def from_registry(cls, ref: str, registry: Registry, runtime: Runtime = "torch") -> Classifier:
        """A version as the registry holds it. With ``onnxruntime_int8``, a version
        registered without an int8 export (or whose export cannot be read) runs its fp32
        export, and says so in the log."""
        net, info = registry.load(ref)
        onnx_model = None
        if runtime == "onnxruntime_int8":
            onnx_model = registry.onnx_int8(info)
            if onnx_model is None:
                log.info("version %s has no int8 export: serving its fp32 export", info.version)
                runtime = "onnxruntime"
        if runtime == "onnxruntime":
            onnx_model = registry.onnx(info)
        return cls.from_net(net, info, registry.novelty(info), runtime, onnx_model)

    @classmethod
    def from_net(
        cls,
        net: nn.Module,
        info: ModelVersionInfo,
        novelty: NoveltyScorer | None = None,
        runtime: Runtime = "torch",
        onnx_model: bytes | None = None,
    ) -> Classifier:
        accuracy = info.tags.get("mnist_test_accuracy")
        return cls(
            net=net.eval(),
            version=info.version,
            aliases=info.aliases,
            trained_on=json.loads(info.tags.get("training_data") or "{}"),
            mnist_test_accuracy=float(accuracy) if accuracy else None,
            temperature=info.temperature,
            runtime=runtime,
            novelty=novelty,
            onnx_model=onnx_model,
        )

    @torch.inference_mode()
    def forward(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The penultimate embeddings (N, hidden) and raw logits (N, 10) of (N, 28, 28) uint8
        images, from one forward pass: the one place a request runs the network."""
        if self._onnx is not None:
            embeddings, logits = self._onnx(images)
            return torch.from_numpy(embeddings), torch.from_numpy(logits)
        embeddings = self.net.embed(to_tensor(images))
        return embeddings, self.net.head(embeddings)

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, 10) float32 for (N, 28, 28) uint8 images, one forward
        pass: ``softmax(logits / temperature)``, which keeps the argmax."""
        _, logits = self.forward(images)
        return torch.softmax(logits * self._inverse_temperature, dim=1).numpy()

    @torch.inference_mode()
    def answer(self, images: np.ndarray) -> Answers:
        """Calibrated probabilities, novelty scores and unusual flags of (N, 28, 28) uint8
        images, all from the one forward pass: the work of every server per answer."""
        embeddings, logits = self.forward(images)
        probabilities = torch.softmax(logits * self._inverse_temperature, dim=1).numpy()
        scores = self.novelty_of(embeddings)
        if scores is None:
            return Answers(probabilities, None, np.zeros(len(probabilities), bool))
        return Answers(probabilities, scores, self.novelty.flagged(scores))  # type: ignore[union-attr]

    def novelty_of(self, embeddings: torch.Tensor) -> np.ndarray | None:
        """The novelty scores (N,) of :meth:`forward`'s embeddings; None without a scorer."""
        return None if self.novelty is None else self.novelty.score(embeddings.numpy())

    def describe(self) -> TrackInfo:
        return TrackInfo(
            model_version=self.version,
            aliases=self.aliases,
            trained_on=self.trained_on,
            mnist_test_accuracy=self.mnist_test_accuracy,
        )

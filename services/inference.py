"""One loaded model version and the per-request work: bytes -> 28x28 -> probabilities.

Shared by the BentoML service and the benchmark's baselines, so every server does the
same work per request and a comparison measures only the serving stack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from contracts.api import MAX_SIDE, TrackInfo
from model.network import to_tensor
from model.novelty import NoveltyScorer
from model.preprocess import decode_image, to_mnist
from model.registry import ModelVersionInfo, Registry
from services.errors import BadRequest, PayloadTooLarge


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
    # The version's novelty scorer (model.novelty), read once at load; None for a version
    # registered without one: its answers then carry no novelty.
    novelty: NoveltyScorer | None = None
    # 1/T as a 0-d tensor: multiplying by it cost 8 us per call where dividing by the
    # Python float cost 20 (a scalar wrapped into a tensor on every request).
    _inverse_temperature: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        self._inverse_temperature = torch.tensor(1.0 / self.temperature, dtype=torch.float32)

    @classmethod
    def from_registry(cls, ref: str, registry: Registry) -> Classifier:
        net, info = registry.load(ref)
        return cls.from_net(net, info, registry.novelty(info))

    @classmethod
    def from_net(
        cls, net: nn.Module, info: ModelVersionInfo, novelty: NoveltyScorer | None = None
    ) -> Classifier:
        accuracy = info.tags.get("mnist_test_accuracy")
        return cls(
            net=net.eval(),
            version=info.version,
            aliases=info.aliases,
            trained_on=json.loads(info.tags.get("training_data") or "{}"),
            mnist_test_accuracy=float(accuracy) if accuracy else None,
            temperature=info.temperature,
            novelty=novelty,
        )

    @torch.inference_mode()
    def forward(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The penultimate embeddings (N, hidden) and raw logits (N, 10) of (N, 28, 28) uint8
        images, from one forward pass: the one place a request runs the network."""
        embeddings = self.net.embed(to_tensor(images))
        return embeddings, self.net.head(embeddings)

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (N, 10) float32 for (N, 28, 28) uint8 images, one forward
        pass: ``softmax(logits / temperature)``, which keeps the argmax."""
        _, logits = self.forward(images)
        return torch.softmax(logits * self._inverse_temperature, dim=1).numpy()

    @torch.inference_mode()
    def answer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities (N, 10) and novelty scores (N,) float32 (None without a
        scorer) of (N, 28, 28) uint8 images, both from the one forward pass."""
        embeddings, logits = self.forward(images)
        probabilities = torch.softmax(logits * self._inverse_temperature, dim=1).numpy()
        return probabilities, self.novelty_of(embeddings)

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

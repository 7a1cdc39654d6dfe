"""The digit classifier: a small CNN that a 2-core CPU trains in minutes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# MNIST's pixel mean and standard deviation (on [0, 1]), applied inside the network so
# every caller feeds raw 0-255 pixels and no caller can forget the normalisation.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class DigitNet(nn.Module):
    """Three conv blocks (conv, batch norm, ReLU, max-pool), one hidden dense layer.

    Input: (N, 1, 28, 28) float pixels in 0-255. Output: (N, 10) logits.
    ``embed`` gives the penultimate layer, which the drift step compares across windows.
    """

    def __init__(
        self,
        channels: tuple[int, int, int] = (32, 64, 128),
        hidden: int = 128,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.features = nn.Sequential(_conv_block(1, c1), _conv_block(c1, c2), _conv_block(c2, c3))
        self.embedding = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c3 * 3 * 3, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 10))

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels / 255.0 - MNIST_MEAN) / MNIST_STD
        return self.embedding(self.features(x))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(pixels))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) uint8 images as the (N, 1, 28, 28) float tensor the network takes."""
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)


@torch.inference_mode()
def predict_proba(net: nn.Module, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities (N, 10) for (N, 28, 28) uint8 images, in eval mode."""
    net.eval()
    out = [
        torch.softmax(net(to_tensor(images[i : i + batch_size])), dim=1).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 10), np.float32)


@dataclass(frozen=True)
class ModelOutputs:
    """What one forward pass of a batch of images gives."""

    logits: np.ndarray  # (N, 10) float32
    probabilities: np.ndarray  # (N, 10) float32, the softmax of the logits
    embeddings: np.ndarray  # (N, D) float32, the penultimate layer (DigitNet.embed)


@torch.inference_mode()
def model_outputs(net: nn.Module, images: np.ndarray, batch_size: int = 1024) -> ModelOutputs:
    """Logits, probabilities and embeddings of (N, 28, 28) uint8 images, in eval mode.

    One forward pass gives all three: ``net.embed`` then ``net.head`` (the layout of
    :class:`DigitNet`). The batched pass the drift step, the novelty scorer's fitting and
    the benchmarks share, so the embeddings a window is scored with are the ones its
    features are computed from.

    Raises:
        TypeError: ``net`` has no ``embed`` and ``head``.
        ValueError: ``images`` is not (N, 28, 28).
    """
    if not (hasattr(net, "embed") and hasattr(net, "head")):
        raise TypeError(f"{type(net).__name__} has no embed/head; a DigitNet is needed")
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"expected (N, 28, 28) images, got shape {images.shape}")
    net.eval()
    logits, probs, embs = [], [], []
    # At least one (possibly empty) batch, so an empty input still yields (0, D) arrays.
    for start in range(0, max(len(images), 1), batch_size):
        emb = net.embed(to_tensor(images[start : start + batch_size]))
        out = net.head(emb)
        logits.append(out.numpy())
        probs.append(torch.softmax(out, dim=1).numpy())
        embs.append(emb.numpy())
    return ModelOutputs(np.concatenate(logits), np.concatenate(probs), np.concatenate(embs))

"""Per-image features the drift step compares between a traffic window and its reference.

The service logs each digit after :func:`model.preprocess.to_mnist`, which already removes
position and size: what can still drift is the shape of the ink (stroke width, aspect,
how much ink there is), and how the model sees the digit (its confidence, the class it
picks, where the digit lands in the penultimate layer). Each is one column here, so the
Evidently report says *what* moved, not only that something did.

Everything is vectorised over the batch: 10,000 images featurise in well under a second
of numpy plus one forward pass of the network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import nn

from model.network import ModelOutputs, model_outputs
from model.preprocess import INK_THRESHOLD, MNIST_SIZE

# Image features, computed from the pixels alone.
IMAGE_COLUMNS: tuple[str, ...] = (
    "ink_mass",
    "bbox_width",
    "bbox_height",
    "bbox_aspect",
    "com_x",
    "com_y",
    "stroke_width",
)
# Model outputs: numerical, then the predicted class (categorical).
OUTPUT_COLUMNS: tuple[str, ...] = ("confidence", "entropy")
CLASS_COLUMN = "predicted_class"
CENTROID_COLUMN = "centroid_distance"


def pc_columns(n_components: int) -> tuple[str, ...]:
    """Names of the embedding's principal-component columns: ``emb_pc1``, ``emb_pc2``, ..."""
    return tuple(f"emb_pc{i + 1}" for i in range(n_components))


@dataclass(frozen=True)
class EmbeddingSummary:
    """A fixed map from the D-dimensional embedding to a handful of numbers.

    Fitted once on the reference and stored with it, so every window of traffic is
    projected the same way: the principal components of the reference embeddings, and the
    distance to the nearest class centroid (large when the network sees something unlike
    any digit it learnt, whichever class it then picks).
    """

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (K, D), orthonormal rows
    centroids: np.ndarray  # (C, D), one per predicted class seen in the reference

    @classmethod
    def fit(
        cls, embeddings: np.ndarray, predicted: np.ndarray, n_components: int = 4
    ) -> EmbeddingSummary:
        """PCA by SVD of the centred embeddings; centroids per predicted class."""
        emb = np.asarray(embeddings, dtype=np.float64)
        if emb.ndim != 2 or len(emb) < 2:
            raise ValueError(f"need at least 2 embeddings of shape (N, D), got {emb.shape}")
        if not 0 <= n_components <= min(emb.shape):
            raise ValueError(f"n_components must be in 0..{min(emb.shape)}, got {n_components}")
        mean = emb.mean(axis=0)
        _, _, vt = np.linalg.svd(emb - mean, full_matrices=False)
        components = vt[:n_components]
        # Fix each component's sign (SVD's is arbitrary) so refits read the same way.
        flip = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
        components = components * flip[:, None]
        classes = np.unique(predicted)
        centroids = np.stack([emb[predicted == c].mean(axis=0) for c in classes])
        return cls(
            mean=mean.astype(np.float32),
            components=components.astype(np.float32),
            centroids=centroids.astype(np.float32),
        )

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def fingerprint(self) -> str:
        """A short hash of the fitted arrays: equal exactly when the map is the same."""
        digest = hashlib.sha256()
        for array in (self.mean, self.components, self.centroids):
            digest.update(np.ascontiguousarray(array, np.float32).tobytes())
            digest.update(str(array.shape).encode())
        return digest.hexdigest()[:16]

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, K) coordinates along the reference's principal components."""
        return (np.asarray(embeddings, np.float32) - self.mean) @ self.components.T

    def centroid_distance(self, embeddings: np.ndarray) -> np.ndarray:
        """(N,) Euclidean distance to the nearest class centroid of the reference."""
        emb = np.asarray(embeddings, np.float32)
        # |a - b|^2 = |a|^2 - 2ab + |b|^2, one matrix product instead of an (N, C, D) array.
        squared = (
            (emb**2).sum(axis=1, keepdims=True)
            - 2.0 * emb @ self.centroids.T
            + (self.centroids**2).sum(axis=1)
        )
        return np.sqrt(np.clip(squared.min(axis=1), 0.0, None))


def image_features(images: np.ndarray) -> pd.DataFrame:
    """Shape features of (N, 28, 28) uint8 images (white ink on black), one row each.

    - ``ink_mass``: total ink in pixel units (a fully white pixel counts 1).
    - ``bbox_width``, ``bbox_height``, ``bbox_aspect`` (width / height): the box around
      the pixels at or above the preprocessing's ink threshold.
    - ``com_x``, ``com_y``: the ink's centre of mass in pixels (MNIST puts it at 14, 14).
    - ``stroke_width``: mean stroke width in pixels, ``2 * ink / total variation``. Along a
      stroke of width w and length L the ink is about w*L and the summed gradient magnitude
      about 2L (one edge up, one down), whatever the anti-aliasing; no threshold needed.

    An image without ink gets zeros, and its centre of mass at the field's centre.
    """
    x = _as_images(images).astype(np.float32) / 255.0
    n = len(x)
    mass = x.sum(axis=(1, 2))
    has_ink = mass > 0
    safe_mass = np.where(has_ink, mass, 1.0)
    index = np.arange(MNIST_SIZE, dtype=np.float32)
    centre = MNIST_SIZE / 2
    com_x = np.where(has_ink, (x.sum(axis=1) @ index) / safe_mass, centre)
    com_y = np.where(has_ink, (x.sum(axis=2) @ index) / safe_mass, centre)

    ink = x >= INK_THRESHOLD
    width = _extent(ink.any(axis=1))
    height = _extent(ink.any(axis=2))
    aspect = np.divide(width, height, out=np.zeros(n, np.float32), where=height > 0)

    return pd.DataFrame(
        {
            "ink_mass": mass,
            "bbox_width": width,
            "bbox_height": height,
            "bbox_aspect": aspect,
            "com_x": com_x,
            "com_y": com_y,
            "stroke_width": stroke_width(x),
        },
        columns=list(IMAGE_COLUMNS),
    ).astype(np.float64)


def stroke_width(grey: np.ndarray) -> np.ndarray:
    """Mean stroke width in pixels of (N, 28, 28) grey images in 0-1, ``2 * ink / total
    variation`` (see :func:`image_features`); 0 for an image without ink."""
    mass = grey.sum(axis=(1, 2))
    padded = np.pad(grey, ((0, 0), (1, 1), (1, 1)))
    grad_y, grad_x = np.gradient(padded, axis=(1, 2))
    variation = np.sqrt(grad_x**2 + grad_y**2).sum(axis=(1, 2))
    return np.divide(2.0 * mass, variation, out=np.zeros_like(mass), where=variation > 0)


def _extent(occupied: np.ndarray) -> np.ndarray:
    """Length of the span from the first to the last True along axis 1; 0 when none."""
    size = occupied.shape[1]
    first = occupied.argmax(axis=1)
    last = size - 1 - occupied[:, ::-1].argmax(axis=1)
    return np.where(occupied.any(axis=1), last - first + 1, 0).astype(np.float32)


def output_features(outputs: ModelOutputs, summary: EmbeddingSummary) -> pd.DataFrame:
    """Model-side features: confidence, entropy, the embedding summary, the predicted class.

    - ``confidence``: the top class probability.
    - ``entropy``: of the predicted distribution, in nats (0 = certain, ln 10 = uniform).
    - ``emb_pc1..K`` and ``centroid_distance``: see :class:`EmbeddingSummary`.
    - ``predicted_class``: the arg-max, an integer 0-9 the drift step treats as categorical.
    """
    p = np.asarray(outputs.probabilities, dtype=np.float64)
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)
    frame = pd.DataFrame({"confidence": p.max(axis=1), "entropy": np.clip(entropy, 0.0, None)})
    projected = summary.project(outputs.embeddings)
    for i, name in enumerate(pc_columns(summary.n_components)):
        frame[name] = projected[:, i].astype(np.float64)
    frame[CENTROID_COLUMN] = summary.centroid_distance(outputs.embeddings).astype(np.float64)
    frame[CLASS_COLUMN] = p.argmax(axis=1).astype(np.int64)
    return frame


def feature_frame(
    images: np.ndarray, outputs: ModelOutputs, summary: EmbeddingSummary
) -> pd.DataFrame:
    """Image and model features side by side, one row per image."""
    return pd.concat(
        [image_features(images), output_features(outputs, summary)], axis=1
    ).reset_index(drop=True)


def featurise(
    net: nn.Module, images: np.ndarray, summary: EmbeddingSummary, batch_size: int = 1024
) -> pd.DataFrame:
    """Every drift feature of (N, 28, 28) uint8 images under ``net``."""
    return feature_frame(images, model_outputs(net, images, batch_size), summary)


def numerical_columns(n_components: int) -> list[str]:
    """The numerical feature columns, in frame order."""
    return [*IMAGE_COLUMNS, *OUTPUT_COLUMNS, *pc_columns(n_components), CENTROID_COLUMN]


def _as_images(images: np.ndarray) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim != 3 or array.shape[1:] != (MNIST_SIZE, MNIST_SIZE):
        raise ValueError(f"expected (N, 28, 28) images, got shape {array.shape}")
    return array

"""Drift features on constructed images: stroke width, centre of mass, entropy, shapes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from model.network import DigitNet, ModelOutputs, model_outputs, to_tensor
from pipelines.drift.features import (
    CLASS_COLUMN,
    IMAGE_COLUMNS,
    EmbeddingSummary,
    feature_frame,
    featurise,
    image_features,
    numerical_columns,
    output_features,
)


def ring(thickness: int, size: int = 28) -> np.ndarray:
    """A '0'-like ring of the given stroke thickness, centred on the field."""
    yy, xx = np.mgrid[0:size, 0:size]
    radius = np.hypot(yy - 14, xx - 14)
    return ((radius <= 8) & (radius > 8 - thickness)).astype(np.uint8) * 255


def blob(centre: tuple[int, int], half: int = 2) -> np.ndarray:
    image = np.zeros((28, 28), np.uint8)
    y, x = centre
    image[y - half : y + half + 1, x - half : x + half + 1] = 255
    return image


def test_thick_strokes_measure_wider_than_thin_ones():
    features = image_features(np.stack([ring(1), ring(2), ring(4)]))
    widths = features["stroke_width"].to_numpy()
    assert widths[0] < widths[1] < widths[2]
    # The estimate is in pixels: a 4-px ring measures about 4 (within the ring's curvature).
    assert 3.0 < widths[2] < 5.0, widths
    assert features["ink_mass"].is_monotonic_increasing


def test_stroke_width_ignores_how_bright_the_ink_is():
    bright = ring(3)
    faint = (bright // 2).astype(np.uint8)
    widths = image_features(np.stack([bright, faint]))["stroke_width"].to_numpy()
    assert widths[0] == pytest.approx(widths[1], rel=0.02)


def test_a_moved_blob_moves_the_centre_of_mass_and_the_box():
    features = image_features(np.stack([blob((14, 14)), blob((6, 20))]))
    assert features.loc[0, "com_x"] == pytest.approx(14.0)
    assert features.loc[0, "com_y"] == pytest.approx(14.0)
    assert features.loc[1, "com_x"] == pytest.approx(20.0)
    assert features.loc[1, "com_y"] == pytest.approx(6.0)
    assert features.loc[0, "bbox_width"] == features.loc[0, "bbox_height"] == 5
    assert features.loc[0, "bbox_aspect"] == pytest.approx(1.0)


def test_a_wide_shape_has_a_wide_aspect():
    image = np.zeros((28, 28), np.uint8)
    image[12:16, 4:24] = 200
    features = image_features(image[None])
    assert features.loc[0, "bbox_width"] == 20
    assert features.loc[0, "bbox_height"] == 4
    assert features.loc[0, "bbox_aspect"] == pytest.approx(5.0)


def test_an_empty_image_gets_zeros_and_the_centre():
    features = image_features(np.zeros((1, 28, 28), np.uint8))
    row = features.iloc[0]
    assert row["ink_mass"] == row["bbox_width"] == row["stroke_width"] == 0
    assert row["com_x"] == row["com_y"] == 14.0
    assert np.isfinite(features.to_numpy()).all()


def test_image_features_have_one_float_row_per_image():
    images = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    features = image_features(images)
    assert list(features.columns) == list(IMAGE_COLUMNS)
    assert len(features) == 7
    assert (features.dtypes == np.float64).all()
    with pytest.raises(ValueError, match="28, 28"):
        image_features(np.zeros((3, 32, 32), np.uint8))


def summary_for(dim: int = 8, n_components: int = 2) -> EmbeddingSummary:
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(200, dim)).astype(np.float32)
    return EmbeddingSummary.fit(emb, rng.integers(0, 10, 200), n_components)


def test_entropy_of_a_uniform_prediction_is_log_ten_and_of_a_certain_one_zero():
    probabilities = np.array([[0.1] * 10, [1.0] + [0.0] * 9], np.float32)
    # The model-side features read the probabilities; the logits are not used.
    outputs = ModelOutputs(
        np.zeros((2, 10), np.float32), probabilities, np.zeros((2, 8), np.float32)
    )
    features = output_features(outputs, summary_for())
    assert features.loc[0, "entropy"] == pytest.approx(np.log(10), rel=1e-5)
    assert features.loc[0, "confidence"] == pytest.approx(0.1)
    assert features.loc[1, "entropy"] == pytest.approx(0.0, abs=1e-6)
    assert features.loc[1, "confidence"] == pytest.approx(1.0)
    assert features[CLASS_COLUMN].tolist() == [0, 0]
    assert features[CLASS_COLUMN].dtype == np.int64


def test_embedding_summary_projects_onto_orthonormal_components():
    rng = np.random.default_rng(2)
    # Most variance along the first axis, then the second.
    emb = rng.normal(size=(500, 6)) * np.array([10.0, 3.0, 0.1, 0.1, 0.1, 0.1])
    summary = EmbeddingSummary.fit(emb, rng.integers(0, 3, 500), n_components=2)
    np.testing.assert_allclose(summary.components @ summary.components.T, np.eye(2), atol=1e-5)
    assert abs(summary.components[0, 0]) > 0.99 and abs(summary.components[1, 1]) > 0.99
    projected = summary.project(emb)
    assert projected.shape == (500, 2)
    assert projected[:, 0].std() > projected[:, 1].std() > 1.0


def test_centroid_distance_is_zero_at_a_centroid_and_grows_away_from_it():
    summary = summary_for()
    centroid = summary.centroids[0]
    distances = summary.centroid_distance(np.stack([centroid, centroid + 100.0]))
    assert distances[0] == pytest.approx(0.0, abs=1e-3)
    assert distances[1] > 100.0


def test_featurise_gives_every_column_for_a_network():
    torch.manual_seed(0)
    net = DigitNet().eval()
    images = np.random.default_rng(3).integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    outputs = model_outputs(net, images, batch_size=5)
    assert outputs.probabilities.shape == (12, 10)
    assert outputs.embeddings.shape == (12, 128)
    np.testing.assert_allclose(outputs.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    summary = EmbeddingSummary.fit(outputs.embeddings, outputs.probabilities.argmax(1), 3)
    # The same batches as above: float32 sums over other batch sizes may differ in the last
    # bits (seen: 1.4e-5 relative with torch 2.13.0+cpu), which is not what this checks.
    frame = featurise(net, images, summary, batch_size=5)
    assert list(frame.columns) == [*numerical_columns(3), CLASS_COLUMN]
    assert len(frame) == 12
    assert frame[numerical_columns(3)].dtypes.eq(np.float64).all()
    pd.testing.assert_frame_equal(frame, feature_frame(images, outputs, summary))


def test_model_outputs_are_one_forward_pass_of_the_network():
    """The logits are the head of the embeddings, the probabilities their softmax, each row
    the network's answer for that image; a network without embed/head is refused."""
    torch.manual_seed(0)
    net = DigitNet().eval()
    images = np.random.default_rng(4).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    outputs = model_outputs(net, images, batch_size=3)
    with torch.inference_mode():
        logits = net(to_tensor(images)).numpy()
        head = net.head(torch.from_numpy(outputs.embeddings)).numpy()
    np.testing.assert_allclose(outputs.logits, logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs.logits, head, rtol=1e-5, atol=1e-6)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(outputs.probabilities, softmax, rtol=1e-4, atol=1e-6)
    empty = model_outputs(net, np.zeros((0, 28, 28), np.uint8))
    assert empty.logits.shape == (0, 10) and empty.embeddings.shape == (0, 128)
    with pytest.raises(TypeError, match="embed/head"):
        model_outputs(torch.nn.Linear(784, 10), images)


def test_featurise_accepts_an_empty_batch():
    net = DigitNet().eval()
    summary = summary_for(dim=128)
    frame = featurise(net, np.zeros((0, 28, 28), np.uint8), summary)
    assert len(frame) == 0
    assert CLASS_COLUMN in frame.columns


def test_a_summary_fingerprint_tells_fitted_maps_apart():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(50, 8)).astype(np.float32)
    predicted = np.arange(50) % 10
    summary = EmbeddingSummary.fit(embeddings, predicted, n_components=3)
    same = EmbeddingSummary.fit(embeddings.copy(), predicted, n_components=3)
    assert summary.fingerprint() == same.fingerprint() and len(summary.fingerprint()) == 16
    # Another fit (other embeddings, or fewer components) is another map.
    assert EmbeddingSummary.fit(embeddings[1:], predicted[1:], 3).fingerprint() != (
        summary.fingerprint()
    )
    assert EmbeddingSummary.fit(embeddings, predicted, 2).fingerprint() != summary.fingerprint()

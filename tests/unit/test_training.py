"""The network, augmentation, training loop, fine-tuning and evaluation, on small data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.augment import AugmentConfig, augment
from model.evaluate import evaluate, plot_confusion, score
from model.network import DigitNet, predict_proba, to_tensor
from model.train import TrainConfig, fine_tune, mixture_weights, train
from tests.conftest import tiny_split

FAST = TrainConfig(epochs=2, batch_size=64, augment=False, seed=7)


def test_network_shapes():
    net = DigitNet().eval()
    x = to_tensor(np.zeros((5, 28, 28), np.uint8))
    assert net(x).shape == (5, 10)
    assert net.embed(x).shape == (5, 128)
    probs = predict_proba(net, np.zeros((3, 28, 28), np.uint8))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_augment_keeps_shape_range_and_is_seeded(mnist):
    batch = to_tensor(mnist.x_train[:64])
    first = augment(batch, torch.Generator().manual_seed(1))
    again = augment(batch, torch.Generator().manual_seed(1))
    other = augment(batch, torch.Generator().manual_seed(2))
    assert first.shape == batch.shape
    assert first.min() >= 0 and first.max() <= 255
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, batch)


def test_thicken_adds_ink_and_thin_removes_it(mnist):
    batch = to_tensor(mnist.x_train[:32])
    # Geometry off, so only the stroke-width transform acts.
    still = {"max_rotation_deg": 0, "scale_range": (1, 1), "max_shear": 0, "max_shift_px": 0}

    def restroke(thicken: float, thin: float) -> torch.Tensor:
        config = AugmentConfig(**still, thicken_prob=thicken, thin_prob=thin)
        return augment(batch, torch.Generator().manual_seed(0), config)

    thick, thin = restroke(1.0, 0.0), restroke(0.0, 1.0)
    assert (thick > 128).sum() > 1.5 * (batch > 128).sum()
    assert (thin > 0).sum() < (batch > 0).sum()


def test_tiny_training_learns_far_above_chance(mnist):
    x, y, x_test, y_test = tiny_split(mnist, 3000, 1000)
    result = train(x, y, FAST)
    accuracy = evaluate(result.net, x_test, y_test).accuracy
    assert accuracy > 0.85, accuracy  # chance is 0.10
    assert len(result.history) == 2
    assert result.history[1]["loss"] < result.history[0]["loss"]


def test_training_is_deterministic_for_a_seed(mnist):
    x, y, x_test, _ = tiny_split(mnist, 500, 50)
    config = TrainConfig(epochs=1, batch_size=64, augment=True, seed=3)
    first, second = train(x, y, config), train(x, y, config)
    np.testing.assert_array_equal(
        predict_proba(first.net, x_test), predict_proba(second.net, x_test)
    )


def test_fine_tune_learns_the_extra_samples_without_touching_the_parent(mnist):
    x, y, x_test, y_test = tiny_split(mnist, 2000, 600)
    parent = train(x, y, FAST).net
    # A population the parent has never seen: digits turned a quarter turn.
    rot_x, rot_y = np.rot90(x_test[:400], axes=(1, 2)).copy(), y_test[:400]
    held_x, held_y = np.rot90(x_test[400:], axes=(1, 2)).copy(), y_test[400:]
    before = evaluate(parent, held_x, held_y).accuracy
    parent_state = {k: v.clone() for k, v in parent.state_dict().items()}

    child = fine_tune(
        parent,
        x,
        y,
        rot_x,
        rot_y,
        TrainConfig(epochs=3, batch_size=64, augment=False, max_lr=2e-3, seed=1),
        extra_share=0.5,
    ).net
    after = evaluate(child, held_x, held_y).accuracy
    assert after > before + 0.2, (before, after)
    assert evaluate(child, x_test[400:], y_test[400:]).accuracy > 0.7  # MNIST not forgotten
    for key, value in parent.state_dict().items():
        torch.testing.assert_close(value, parent_state[key])


def test_fine_tune_rejects_a_bad_share(mnist):
    with pytest.raises(ValueError, match="extra_share"):
        fine_tune(
            DigitNet(),
            mnist.x_train[:10],
            mnist.y_train[:10],
            mnist.x_train[:2],
            mnist.y_train[:2],
            FAST,
            extra_share=1.0,
        )


def test_score_counts_and_per_class():
    result = score(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]))
    assert result.accuracy == pytest.approx(3 / 5)
    assert result.n == 5
    assert result.per_class == {"0": 0.5, "1": 1.0, "2": 0.0}
    assert result.confusion[0, 1] == 1 and result.confusion[2, 0] == 1
    assert result.confusion.sum() == 5


def test_confusion_figure_is_a_png(tmp_path: Path):
    confusion = np.eye(10, dtype=np.int64) * 90 + 1
    path = plot_confusion(confusion, tmp_path / "cm.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000


def test_score_counts_rejected_inputs_as_wrong():
    result = score(np.array([3, 3, 4]), np.array([3, -1, 4]))
    assert result.accuracy == pytest.approx(2 / 3)
    assert result.per_class == {"3": 0.5, "4": 1.0}
    assert result.confusion.sum() == 2


@pytest.mark.parametrize(
    ("sizes", "shares", "per_group"),
    [
        ((4, 2, 0), (0.3, 0.2), (0.7, 0.3, None)),  # no pseudo-labels: base takes 0.7
        ((4, 2, 3), (0.3, 0.2), (0.5, 0.3, 0.2)),
        ((4, 2, 300), (0.3, 0.2), (0.5, 0.3, 0.2)),  # 100x more pseudo-labels: same shares
        ((4, 0, 3), (0.3, 0.2), (0.8, None, 0.2)),  # no labels: their share is MNIST's
        ((4, 2, 3), (0.0, 0.0), (1.0, 0.0, 0.0)),
    ],
)
def test_mixture_weights_give_each_group_its_share(sizes, shares, per_group):
    weights = mixture_weights(sizes, shares)
    assert len(weights) == sum(sizes) and weights.sum() == pytest.approx(1.0)
    start = 0
    for size, share in zip(sizes, per_group, strict=True):
        group = weights[start : start + size]
        start += size
        if size:
            assert group.sum() == pytest.approx(share) and np.ptp(group) == pytest.approx(0)


@pytest.mark.parametrize(
    ("sizes", "shares", "message"),
    [
        ((4, 2, 3), (1.0, 0.0), "extra_share"),
        ((4, 2, 3), (0.3, -0.1), "pseudo_share"),
        ((4, 2, 3), (0.6, 0.5), "nothing for the base"),
        ((0, 2, 3), (0.3, 0.2), "no base"),
    ],
)
def test_mixture_weights_refuse_bad_shares(sizes, shares, message):
    with pytest.raises(ValueError, match=message):
        mixture_weights(sizes, shares)

"""Drawn-style restyling of MNIST digits."""

from __future__ import annotations

import numpy as np
import pytest

from model.preprocess import to_mnist
from model.styles import STYLES, restyle


@pytest.mark.parametrize("style", list(STYLES))
def test_each_style_keeps_the_format_and_changes_the_digits(mnist, style):
    digits = mnist.x_test[:40]
    styled = restyle(digits, style, seed=1)
    assert styled.shape == digits.shape and styled.dtype == np.uint8
    assert np.abs(styled.astype(int) - digits.astype(int)).mean() > 3
    np.testing.assert_array_equal(styled, restyle(digits, style, seed=1))
    for image in styled:  # every restyled digit is still a drawable digit
        to_mnist(image)


def test_thick_has_more_ink_and_thin_less(mnist):
    digits = mnist.x_test[:100]
    ink = (digits > 128).sum()
    assert (restyle(digits, "thick") > 128).sum() > 1.4 * ink
    assert (restyle(digits, "thin") > 128).sum() < 0.8 * ink


def test_unknown_style_is_refused(mnist):
    with pytest.raises(ValueError, match="unknown style"):
        restyle(mnist.x_test[:1], "cursive")

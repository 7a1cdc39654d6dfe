"""Restyle MNIST digits the way people draw them with a mouse or a finger.

Each style takes (N, 28, 28) uint8 MNIST digits and returns new 28x28 images in the same
format (white ink on black). They are used to check that the model holds up on drawn
digits (``digitloop data styles`` then ``digitloop evaluate --preprocess``) and, later, as
drifted populations for the simulator. Strokes are re-drawn at 4x resolution so a thick
marker or a hairline looks like one, not like a blurred pixel.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

UPSCALE = 4


def upscale(digit: np.ndarray) -> np.ndarray:
    """A 28x28 uint8 digit at ``UPSCALE`` times the size, bilinear, as floats in 0-1."""
    size = 28 * UPSCALE
    big = Image.fromarray(digit).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(big, dtype=np.float32) / 255.0


def downscale(big: np.ndarray) -> np.ndarray:
    """Back to 28x28 uint8 by averaging each ``UPSCALE`` x ``UPSCALE`` box."""
    small = Image.fromarray((np.clip(big, 0, 1) * 255).astype(np.uint8)).resize(
        (28, 28), Image.Resampling.BOX
    )
    return np.asarray(small, dtype=np.uint8)


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (xx**2 + yy**2) <= radius**2


def thick(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A felt marker: strokes 2-3x as wide."""
    mask = upscale(digit) > 0.4
    grown = ndimage.binary_dilation(mask, structure=_disk(int(rng.integers(3, 6))))
    return downscale(ndimage.gaussian_filter(grown.astype(np.float32), 1.0))


def thin(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fine pen: the stroke's skeleton with a hairline width."""
    mask = upscale(digit) > 0.5
    core = mask
    # Erode as far as the stroke allows: a faint digit keeps at least a third of its ink.
    for radius in range(int(rng.integers(2, 4)), 0, -1):
        core = ndimage.binary_erosion(mask, structure=_disk(radius))
        if core.sum() >= mask.sum() / 3:
            break
    else:
        core = mask
    return downscale(ndimage.gaussian_filter(core.astype(np.float32), 0.8))


def tilt(rng: np.random.Generator) -> float:
    """The rotated style's angle in degrees: 10-25 either way."""
    return float(rng.uniform(10, 25)) * (1 if rng.random() < 0.5 else -1)


def rotated(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A tilted hand: rotated by 10-25 degrees either way."""
    return np.asarray(Image.fromarray(digit).rotate(tilt(rng), Image.Resampling.BILINEAR))


def shifted(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Off-centre: drawn towards a corner of the canvas, smaller."""
    scale = float(rng.uniform(0.55, 0.8))
    size = max(8, round(28 * scale))
    small = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.LANCZOS))
    canvas = np.zeros((28, 28), np.uint8)
    top, left = (int(v) for v in rng.integers(0, 28 - size + 1, size=2))
    canvas[top : top + size, left : left + size] = small
    return canvas


def wobbly(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A shaky mouse: a smooth random displacement of every stroke."""
    big = upscale(digit)
    size = big.shape[0]
    # A smooth field (4x4 control points) moving strokes by about 0.7 px at 28x28.
    coarse = rng.normal(0.0, 1.0, size=(2, 4, 4)).astype(np.float32)
    field = np.stack([ndimage.zoom(c, size / 4, order=3) for c in coarse]) * 0.7 * UPSCALE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    warped = ndimage.map_coordinates(big, [yy + field[0], xx + field[1]], order=1)
    return downscale(warped)


STYLES: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "thick": thick,
    "thin": thin,
    "rotated": rotated,
    "shifted": shifted,
    "wobbly": wobbly,
}


def restyle(images: np.ndarray, style: str, seed: int = 0) -> np.ndarray:
    """Apply one style to each of (N, 28, 28) uint8 digits, reproducibly for a seed."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    rng = np.random.default_rng(seed)
    draw = STYLES[style]
    return np.stack([draw(image, rng) for image in images]).astype(np.uint8)


# Seven-segment digits, as people draw them when they write like a digital clock: the
# segments (a top, b/c right, d bottom, e/f left, g middle) each digit lights.
SEGMENTS = {
    0: "abcdef",
    1: "bc",
    2: "abged",
    3: "abgcd",
    4: "fgbc",
    5: "afgcd",
    6: "afgedc",
    7: "abc",
    8: "abcdefg",
    9: "abcdfg",
}
_SEGMENT_ENDS = {
    "a": ("tl", "tr"),
    "b": ("tr", "mr"),
    "c": ("mr", "br"),
    "d": ("bl", "br"),
    "e": ("ml", "bl"),
    "f": ("tl", "ml"),
    "g": ("ml", "mr"),
}


def segment_digits(labels: np.ndarray, seed: int = 0, size: int = 112) -> np.ndarray:
    """Draw each label as a hand-drawn seven-segment digit on a ``size`` canvas (white ink).

    Width, height, slant, position, stroke width and a little jitter at every corner vary
    per drawing, as they do between people and between tries.
    """
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    out = np.zeros((len(labels), size, size), np.uint8)
    for i, label in enumerate(labels):
        canvas = Image.new("L", (size, size), 0)
        pen = ImageDraw.Draw(canvas)
        w, h = rng.uniform(0.25, 0.4) * size, rng.uniform(0.5, 0.72) * size
        x0 = (size - w) / 2 + rng.uniform(-0.09, 0.09) * size
        y0 = (size - h) / 2 + rng.uniform(-0.07, 0.07) * size
        slant = rng.uniform(-0.25, 0.05)
        corners = {
            "tl": (x0, y0),
            "tr": (x0 + w, y0),
            "ml": (x0, y0 + h / 2),
            "mr": (x0 + w, y0 + h / 2),
            "bl": (x0, y0 + h),
            "br": (x0 + w, y0 + h),
        }
        jittered = {
            k: (x + slant * (y - size / 2) + rng.normal(0, 1.5), y + rng.normal(0, 1.5))
            for k, (x, y) in corners.items()
        }
        width = int(rng.integers(5, 10))
        for segment in SEGMENTS[int(label)]:
            start, end = _SEGMENT_ENDS[segment]
            pen.line([jittered[start], jittered[end]], fill=255, width=width)
        out[i] = np.asarray(canvas)
    return out

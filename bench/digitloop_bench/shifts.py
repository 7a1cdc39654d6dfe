"""Shifted populations of digits, to calibrate and test the drift step.

Each population is what the service would log for it: drawn on some canvas, then passed
through :func:`model.preprocess.to_mnist` (crop to the ink, longer side to 20 px, centre
of mass at the centre), as (N, 28, 28) uint8 white-on-black images with their labels.
Because the service re-centres and rescales, a digit drawn small in a corner does not
reach the model small or off-centre: it arrives blown up from a few pixels, blurrier and
coarser. The shifts below are built so that what remains after preprocessing is the
real difference a person would make, not an artefact the service already removes.

- ``thick``, ``thin``, ``rotated``, ``shifted``, ``wobbly``: :mod:`model.styles`
  restylings of MNIST test digits (a felt marker, a fine pen, a tilted hand, a small digit
  off-centre on the 28x28 field, a shaky mouse);
- ``small_offcentre``: a digit drawn at 10-16 px somewhere on a 112x112 canvas;
- ``typeset``: digits 0-9 rendered with the DejaVu TrueType fonts found on the machine and
  PIL's built-in font, in several weights and sizes, slightly rotated and moved.

Nothing is downloaded; fonts that are missing are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from model.preprocess import preprocess_batch
from model.styles import restyle, segment_digits

Population = tuple[np.ndarray, np.ndarray]

# Fonts looked for, in Debian's and most Linux distributions' DejaVu locations.
FONT_DIRS: tuple[Path, ...] = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu"),
    Path("/usr/share/fonts/TTF"),
)
FONT_FILES: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-ExtraLight.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSansCondensed-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerifCondensed.ttf",
)
# PIL's own scalable font (Aileron), always there when PIL has FreeType.
BUILTIN_FONT = "<pil-default>"
TYPESET_CANVAS = 112
SMALL_CANVAS = 112


def service_view(images: np.ndarray, labels: np.ndarray) -> Population:
    """What the service logs for these drawings: ``to_mnist`` of each, empty ones dropped."""
    x, accepted = preprocess_batch(images)
    return x[accepted], np.asarray(labels, dtype=np.int64)[accepted]


def in_distribution(digits: np.ndarray, labels: np.ndarray, seed: int = 0) -> Population:
    """MNIST digits as the service would log them (``to_mnist`` changes them only slightly)."""
    del seed  # nothing random: the unshifted population
    return service_view(digits, labels)


def on_the_canvas(digits: np.ndarray, labels: np.ndarray, seed: int = 0) -> Population:
    """MNIST digits drawn large on the sketchpad's canvas, as the service would log them:
    the load bench's sketch PNGs (:func:`digitloop_bench.serving.loadgen.render_sketch`),
    decoded and preprocessed as the service does.

    The same digits by the same writers, through another rendering: crisp strokes about
    5 % wider than MNIST's pens once preprocessed (by the drift step's ``stroke_width``).
    """
    from digitloop_bench.serving.loadgen import render_sketch
    from model.preprocess import decode_image

    del seed  # nothing random: the same digits, drawn
    return service_view(np.stack([decode_image(render_sketch(d)) for d in digits]), labels)


def _styled(style: str) -> Callable[[np.ndarray, np.ndarray, int], Population]:
    def shift(digits: np.ndarray, labels: np.ndarray, seed: int = 0) -> Population:
        return service_view(restyle(digits, style, seed), labels)

    shift.__name__ = style
    shift.__doc__ = f"MNIST digits restyled ``{style}`` (:mod:`model.styles`), as logged."
    return shift


thick = _styled("thick")
thin = _styled("thin")
rotated = _styled("rotated")
shifted = _styled("shifted")
wobbly = _styled("wobbly")


def small_offcentre(digits: np.ndarray, labels: np.ndarray, seed: int = 0) -> Population:
    """Digits drawn small (10-16 px of a 112 px canvas) anywhere on it, as logged.

    The service crops and scales the few pixels of ink back up to 20 px, so what the model
    sees is a coarse, blurred digit: the shift a person makes by drawing tiny in a corner.
    """
    rng = np.random.default_rng(seed)
    canvases = np.zeros((len(digits), SMALL_CANVAS, SMALL_CANVAS), np.uint8)
    for i, digit in enumerate(digits):
        size = int(rng.integers(10, 17))
        small = Image.fromarray(digit).resize((size, size), Image.Resampling.LANCZOS)
        top, left = (int(v) for v in rng.integers(0, SMALL_CANVAS - size + 1, size=2))
        canvases[i, top : top + size, left : left + size] = np.asarray(small)
    return service_view(canvases, labels)


@cache
def available_fonts() -> tuple[str, ...]:
    """Paths of the TrueType fonts found, plus PIL's built-in font."""
    found = []
    for name in FONT_FILES:
        for folder in FONT_DIRS:
            if (folder / name).is_file():
                found.append(str(folder / name))
                break
    return (*found, BUILTIN_FONT)


@cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if path == BUILTIN_FONT:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size=size)


def render_digit(
    digit: int,
    font: str,
    size: int,
    angle: float = 0.0,
    offset: tuple[int, int] = (0, 0),
    weight: int = 0,
) -> np.ndarray:
    """One typeset digit, white on a black ``TYPESET_CANVAS`` square (before preprocessing).

    ``weight`` thickens the glyph by drawing its outline that many pixels wide.
    """
    canvas = Image.new("L", (TYPESET_CANVAS, TYPESET_CANVAS), 0)
    pen = ImageDraw.Draw(canvas)
    centre = (TYPESET_CANVAS / 2 + offset[0], TYPESET_CANVAS / 2 + offset[1])
    pen.text(
        centre,
        str(digit),
        fill=255,
        font=_font(font, size),
        anchor="mm",
        stroke_width=weight,
        stroke_fill=255,
    )
    if angle:
        canvas = canvas.rotate(angle, Image.Resampling.BILINEAR)
    return np.asarray(canvas)


def typeset(digits: np.ndarray, labels: np.ndarray, seed: int = 0) -> Population:
    """Printed digits with the same labels as ``digits``, in random fonts, as logged.

    Only the labels are used (the class balance stays that of the input); each is
    rendered in a random font among :func:`available_fonts`, 40-80 px high, up to 2 px of
    extra weight, rotated by up to 8 degrees and moved by up to 12 px.
    """
    del digits  # printed, not restyled: the labels are what is kept
    rng = np.random.default_rng(seed)
    fonts = available_fonts()
    images = np.stack(
        [
            render_digit(
                int(label),
                font=fonts[int(rng.integers(len(fonts)))],
                size=int(rng.integers(40, 81)),
                angle=float(rng.uniform(-8, 8)),
                offset=(int(rng.integers(-12, 13)), int(rng.integers(-12, 13))),
                weight=int(rng.integers(0, 3)),
            )
            for label in labels
        ]
    )
    return service_view(images, labels)


ShiftFn = Callable[[np.ndarray, np.ndarray, int], Population]


def segments(digits: np.ndarray, labels: np.ndarray, seed: int = 0) -> Population:
    """Digits drawn like a digital clock's seven segments (the digits' labels only).

    Legible to anyone, and far from MNIST's handwriting: a champion trained on MNIST gets
    about 89 % of them, which is what the simulator's drifted phase starts from.
    """
    del digits  # drawn from the labels alone
    return service_view(segment_digits(np.asarray(labels), seed), labels)


SHIFTS: dict[str, ShiftFn] = {
    "thick": thick,
    "thin": thin,
    "rotated": rotated,
    "shifted": shifted,
    "small_offcentre": small_offcentre,
    "wobbly": wobbly,
    "typeset": typeset,
    "segments": segments,
}


def make_shift(name: str, digits: np.ndarray, labels: np.ndarray, seed: int = 0) -> Population:
    """The ``name`` population built from MNIST ``digits``/``labels`` (see :data:`SHIFTS`)."""
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; choose from {', '.join(SHIFTS)}")
    return SHIFTS[name](digits, labels, seed)

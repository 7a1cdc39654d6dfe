"""How far could a per-drawing drift test go? A detector told the style, as a ceiling.

    .venv/bin/python -m digitloop_bench.drift ceiling [--model-file quick.pt] [--json]

The drift step's per-drawing tests (:mod:`model.novelty`, :mod:`pipelines.drift.geometry`)
are not told what a new population looks like: they flag what is far from MNIST. This
bench asks what the logged drawings could give at best. Per style of
:mod:`digitloop_bench.shifts`, it trains a detector that *is* told: a logistic regression
on what the drift step reads of each drawing (the network's embedding and logits, and the
four geometry features), on half of the style's drawings against MNIST as logged and
MNIST drawn on the sketchpad's canvas (:func:`digitloop_bench.shifts.on_the_canvas`). Its
threshold flags ``share`` of each of those two held out, so it cannot pass by flagging the
canvas, which every real drawing comes from. It reports

- the share of the style's other half it flags, and the window test's power with ``mix``
  of a window from that half and the rest from held-out MNIST, or from held-out canvas
  digits (the binomial test of :func:`model.novelty.window_test` at the larger of the two
  flagged shares, so that it holds for both);
- the share it flags of the style's *resampling control* (:func:`resampling_control`):
  MNIST digits put through the style's own interpolation with the style itself at zero.
  A detector that flags the control about as often as the style sees the interpolation,
  not the tilt, the shake or the place of the drawing.

Measured with ``python -m digitloop_bench.drift ceiling --model-file M --json`` (about
100 s each), M the novelty bench's quick model (2 epochs on 20,000 digits) or an 8-epoch
champion of all MNIST with augmentation; 1,000 windows of 200 drawings per style with 10 %
shifted, "detected" with held-out MNIST or canvas digits for the other 90 %; 1,000 clean
windows of either kind alarmed at most 4 times per style:

================  ======================================  ======================================
                  quick model                             8-epoch champion
style             flagged  its resampling  detected       flagged  its resampling  detected
================  =======  ==============  =============  =======  ==============  =============
thick             73.6 %   12.4 %          262, 870       70.0 %   4.8 %           588, 819
thin              64.0 %   17.6 %          448, 719       56.7 %   3.4 %           525, 270
rotated           71.9 %   90.7 %          91, 859        39.1 %   39.0 %          94, 221
wobbly            88.1 %   62.4 %          478, 993       49.7 %   34.5 %          338, 430
shifted           95.1 %   4.4 %           762, 1000      64.2 %   4.4 %           525, 753
small off-centre  99.8 %   -               988, 1000      95.4 %   -               1000, 999
typeset           95.2 %   -               964, 998       96.8 %   -               993, 1000
seven-segment     99.8 %   -               1000, 1000     99.5 %   -               1000, 1000
================  ======================================  ======================================

What it says of issue 18's bound (0.8 at 10 %):

- **Rotated and wobbly:** told the style, the detector flags the interpolation. Rotated by
  10-25 degrees and back again, with no tilt left, MNIST digits are flagged as often as
  the tilted ones (91 % against 72 %; 39 % against 39 %); the 4x redraw of the pens
  alone is most of wobbly's flags. A tilted or shaky hand on the sketchpad has neither.
- **Shifted:** on the 28 px field, drawing small also coarsens the digit, and that is
  what is flagged. At the same scale and place on the 280 px canvas people draw on, the
  preprocessing brings it back to the canvas digit: 4.4 % flagged, as clean digits.
- **Thick and thin:** the pens themselves show (their redraw alone is flagged 3-18 %).
  Made to spare canvas digits, a detector told the pen detects 26-59 % of windows with
  MNIST around them and 27-87 % with canvas digits around them: the geometry test's 34-44 %
  for thick and 20-24 % for thin (the novelty bench) are within what is there to find.
- **The new shapes** (typeset, small off-centre, seven-segment) are where told and untold
  part: 96-100 % of windows here, 4-62 % for the drift step's tests. A test that learnt
  what a window's minority has in common could gain there. A nearest-neighbour two-sample
  test of the window against the reference (whitened embeddings, with and without the
  geometry features, k = 5 and 10) caught at most 52 % of seven-segment and 28 % of typeset
  windows at 10 % and alarmed on every window of canvas digits: it sees the canvas as a
  population too (a script run by hand, not kept).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch import nn

from digitloop_bench.serving.loadgen import CANVAS, render_sketch
from digitloop_bench.shifts import make_shift, on_the_canvas, service_view
from model.network import model_outputs
from model.novelty import calibrate_threshold, window_test
from model.preprocess import decode_image
from model.styles import downscale, tilt, upscale
from pipelines.drift.geometry import geometry_features


def _rotated_and_back(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # The rotated style's angles and bilinear interpolation, undone: no tilt is left.
    angle = tilt(rng)
    there = Image.fromarray(digit).rotate(angle, Image.Resampling.BILINEAR)
    return np.asarray(there.rotate(-angle, Image.Resampling.BILINEAR))


def _pen_resampling(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # The thick, thin and wobbly pens redraw at 4x and box-filter back; here with no pen.
    del rng
    return downscale(upscale(digit))


def _shifted_on_the_canvas(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # The shifted style's scale and place on the 280 px canvas people draw on, with the
    # canvas's strokes (:func:`digitloop_bench.shifts.on_the_canvas`), rather than on the
    # 28 px field, where shrinking the digit also coarsens it.
    scale = float(rng.uniform(0.55, 0.8))
    size = round(CANVAS * scale)
    small = decode_image(render_sketch(digit, canvas=size))
    canvas = np.full((CANVAS, CANVAS), small[0, 0], small.dtype)
    top, left = (int(v) for v in rng.integers(0, CANVAS - size + 1, size=2))
    canvas[top : top + size, left : left + size] = small
    return canvas


CONTROLS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "rotated": _rotated_and_back,
    "thick": _pen_resampling,
    "thin": _pen_resampling,
    "wobbly": _pen_resampling,
    "shifted": _shifted_on_the_canvas,
}


def resampling_control(
    style: str, digits: np.ndarray, labels: np.ndarray, seed: int = 0
) -> np.ndarray | None:
    """The ``style``'s interpolation without the style, as logged; None for a style that
    is a new shape rather than a redrawn MNIST digit (typeset, seven-segment) or that has
    no such control (small off-centre)."""
    draw = CONTROLS.get(style)
    if draw is None:
        return None
    rng = np.random.default_rng(seed)
    images, _ = service_view(np.stack([draw(d, rng) for d in digits]), labels)
    return images


def drawing_features(net: nn.Module, images: np.ndarray) -> np.ndarray:
    """What the drift step reads of each logged drawing: embedding, logits, geometry."""
    outputs = model_outputs(net, images)
    return np.hstack([outputs.embeddings, outputs.logits, geometry_features(images)])


def fit_detector(negatives: Sequence[np.ndarray], positives: np.ndarray):
    """A logistic regression of ``positives`` against every negative source, each source
    weighing as much in the fit as the positives, however many drawings it has."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.vstack([*negatives, positives])
    y = np.concatenate([np.zeros(sum(len(n) for n in negatives)), np.ones(len(positives))])
    weight = np.concatenate(
        [np.full(len(n), len(positives) / len(n)) for n in negatives] + [np.ones(len(positives))]
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(x, y, logisticregression__sample_weight=weight)
    return model


def window_hits(
    clean: np.ndarray,
    shifted: np.ndarray,
    share: float,
    alpha: float,
    window_size: int,
    mix: float,
    windows: int,
    rng: np.random.Generator,
) -> int:
    """Windows of ``window_size`` drawings, ``mix`` of them from ``shifted`` and the rest
    from ``clean`` (per-drawing flags, drawn without replacement), that the binomial window
    test at ``share`` and ``alpha`` detects."""
    n_shifted = round(mix * window_size)
    hits = 0
    for _ in range(windows):
        flagged = int(clean[rng.choice(len(clean), window_size - n_shifted, replace=False)].sum())
        flagged += int(shifted[rng.choice(len(shifted), n_shifted, replace=False)].sum())
        hits += window_test(flagged, window_size, share, alpha)[0]
    return hits


@dataclass(frozen=True)
class StyleCeiling:
    """One style's ceiling: what the told detector flags and detects."""

    style: str
    flagged: float  # share of the style's held-out half
    control_flagged: float | None  # share of its resampling control
    hits: dict[str, int]  # windows detected at the mix, per background (MNIST, canvas)
    false_alarms: dict[str, int]  # clean windows detected, per background
    windows: int
    held_out_flagged: dict[str, float]  # share of held-out MNIST, canvas digits flagged

    def as_dict(self) -> dict[str, object]:
        return {
            "flagged": round(self.flagged, 4),
            "control_flagged": None
            if self.control_flagged is None
            else round(self.control_flagged, 4),
            "hits": self.hits,
            "false_alarms": self.false_alarms,
            "windows": self.windows,
            "power": {k: round(v / self.windows, 4) for k, v in self.hits.items()},
            "held_out_flagged": {k: round(v, 4) for k, v in self.held_out_flagged.items()},
        }


def style_ceilings(
    net: nn.Module,
    reference: tuple[np.ndarray, np.ndarray],
    holdout: tuple[np.ndarray, np.ndarray],
    styles: Sequence[str],
    share: float,
    alpha: float,
    window_size: int,
    mix: float,
    windows: int,
    pool: int,
    seed: int = 0,
) -> dict[str, StyleCeiling]:
    """Train and judge a told detector per style (see the module's docstring).

    ``reference`` (raw MNIST digits and labels) trains it, as logged and on the canvas;
    ``holdout`` sets its threshold, gives the clean drawings of every window and the digits
    each style and control is made from.
    """
    rng = np.random.default_rng(seed)
    negatives = [
        drawing_features(net, service_view(*reference)[0]),
        drawing_features(net, on_the_canvas(*reference)[0]),
    ]
    held_out = {
        "mnist": drawing_features(net, service_view(*holdout)[0]),
        "canvas": drawing_features(net, on_the_canvas(*holdout)[0]),
    }
    ceilings = {}
    for i, style in enumerate(styles):
        rows = rng.choice(len(holdout[0]), size=min(pool, len(holdout[0])), replace=False)
        digits, labels = holdout[0][rows], holdout[1][rows]
        images, _ = make_shift(style, digits, labels, seed=seed + 1 + i)
        features = drawing_features(net, images)
        half = len(features) // 2
        detector = fit_detector(negatives, features[:half])
        scores = {name: detector.decision_function(f) for name, f in held_out.items()}
        threshold, calibrated, _ = calibrate_threshold(scores, share)
        flags = {name: s > threshold for name, s in scores.items()}
        shifted = detector.decision_function(features[half:]) > threshold
        control = resampling_control(style, digits[half:], labels[half:], seed=seed + 1 + i)
        judge = {
            "share": calibrated,
            "alpha": alpha,
            "window_size": window_size,
            "windows": windows,
            "rng": rng,
        }
        ceilings[style] = StyleCeiling(
            style=style,
            flagged=float(shifted.mean()),
            control_flagged=None
            if control is None
            else float(
                (detector.decision_function(drawing_features(net, control)) > threshold).mean()
            ),
            hits={name: window_hits(f, shifted, mix=mix, **judge) for name, f in flags.items()},
            false_alarms={name: window_hits(f, f, mix=0.0, **judge) for name, f in flags.items()},
            windows=windows,
            held_out_flagged={name: float(f.mean()) for name, f in flags.items()},
        )
    return ceilings

"""Batch augmentation that makes MNIST look like digits people draw with a mouse or finger.

Drawn digits reach the network through :mod:`model.preprocess`, which already removes
position and size; what is left, and what this mimics, is the way the stroke itself
differs from a pen on paper: marker-thick or hairline-thin lines, a tilted hand, a
slightly squashed or sheared shape, and a centre of mass that lands a pixel or two off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms, each drawn per image."""

    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.1)
    max_shear: float = 0.15
    max_shift_px: float = 2.0
    thicken_prob: float = 0.25
    thin_prob: float = 0.2


def augment(
    pixels: torch.Tensor, generator: torch.Generator, config: AugmentConfig = AugmentConfig()
) -> torch.Tensor:
    """Randomly restyle a (N, 1, 28, 28) batch of 0-255 pixels; returns a new tensor."""
    n = pixels.shape[0]
    x = _random_stroke_width(pixels, generator, config)

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (high - low) + low

    angle = uniform(-config.max_rotation_deg, config.max_rotation_deg) * math.pi / 180
    scale = uniform(*config.scale_range)
    shear = uniform(-config.max_shear, config.max_shear)
    # affine_grid works in [-1, 1] coordinates: a shift of one pixel is 2/28.
    shift = uniform(-config.max_shift_px, config.max_shift_px) * 2 / 28
    shift_y = uniform(-config.max_shift_px, config.max_shift_px) * 2 / 28
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, shift], 1), torch.stack([sin, cos, shift_y], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp_(0.0, 255.0)  # bilinear weights can overshoot by a rounding error


def _random_stroke_width(
    pixels: torch.Tensor, generator: torch.Generator, config: AugmentConfig
) -> torch.Tensor:
    draw = torch.rand(pixels.shape[0], generator=generator).view(-1, 1, 1, 1)
    thick = F.max_pool2d(pixels, kernel_size=3, stride=1, padding=1)
    # Thin: keep only the stroke's core by dropping the anti-aliased rim, then re-stretch.
    thin = ((pixels - 110.0) * (255.0 / 145.0)).clamp(0.0, 255.0)
    out = torch.where(draw < config.thicken_prob, thick, pixels)
    is_thin = (draw >= config.thicken_prob) & (draw < config.thicken_prob + config.thin_prob)
    return torch.where(is_thin, thin, out)

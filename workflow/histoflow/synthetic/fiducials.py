"""Slides of fiducial dots at known sub-pixel positions, to prove where a read puts pixels.

Every level of the pyramid is rendered from the same continuous positions (not
downsampled from level 0), so each level is exact at its own scale. Coordinates use
the pixel-area convention: pixel `j` covers [j, j + 1) and its centre is j + 0.5, so a
point at level-0 coordinate `p` lies at `p / s` in an image read with `s` level-0
pixels per pixel. A read that follows this convention places every dot there; a read
shifted by half a pixel or scaled by a rounded factor does not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoflow.synthetic.writers import write_pyramidal_tiff

GLASS = 250  # background grey; dots are dark Gaussians on it
DEPTH = 200  # how much darker a dot's centre is


@dataclass(frozen=True)
class Fiducials:
    """Dots of one generated slide, in level-0 pixels."""

    xy: np.ndarray  # (n, 2) float64: x, y of each dot's centre (pixel-area convention)
    sigma: float  # Gaussian sigma of every dot, level-0 pixels
    mpp: float
    size: tuple[int, int]  # (width, height) of level 0


def dot_positions(
    width: int, height: int, spacing: float, seed: int = 0, border: float | None = None
) -> np.ndarray:
    """A jittered grid of (x, y) dot centres `spacing` apart, at random sub-pixel offsets."""
    border = spacing if border is None else border
    xs = np.arange(border, width - border, spacing)
    ys = np.arange(border, height - border, spacing)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    jitter = np.random.default_rng(seed).uniform(-0.25, 0.25, grid.shape) * spacing
    return grid + jitter


def render_level(shape: tuple[int, int], xy: np.ndarray, sigma: float, scale: float) -> np.ndarray:
    """(H, W, 3) uint8 of the dots seen with `scale` level-0 pixels per pixel.

    Each pixel takes the Gaussian's value at its centre, so the discrete intensity
    centroid of a dot is its true position (sigma of a pixel or more).
    """
    h, w = shape
    dark = np.zeros((h, w), np.float64)
    s = sigma / scale
    reach = int(np.ceil(4 * s)) + 1
    for x, y in xy / scale:
        x0, x1 = max(int(x) - reach, 0), min(int(x) + reach + 1, w)
        y0, y1 = max(int(y) - reach, 0), min(int(y) + reach + 1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        gx = np.exp(-0.5 * ((np.arange(x0, x1) + 0.5 - x) / s) ** 2)
        gy = np.exp(-0.5 * ((np.arange(y0, y1) + 0.5 - y) / s) ** 2)
        dark[y0:y1, x0:x1] += np.outer(gy, gx)
    grey = np.clip(np.rint(GLASS - DEPTH * np.clip(dark, 0, 1)), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def write_fiducial_slide(
    path: str | os.PathLike,
    size: tuple[int, int],
    mpp: float,
    spacing: float,
    sigma: float,
    levels: int = 3,
    seed: int = 0,
) -> Fiducials:
    """A pyramidal TIFF (losslessly compressed) of dots; level k is 2**k times smaller.

    `size` must be divisible by 2**(levels - 1), so every level's downsample is exact.
    """
    width, height = size
    step = 2 ** (levels - 1)
    if width % step or height % step:
        raise ValueError(f"size {size} is not divisible by {step} ({levels} levels)")
    xy = dot_positions(width, height, spacing, seed)
    pyramid = [
        render_level((height // 2**k, width // 2**k), xy, sigma, 2.0**k) for k in range(levels)
    ]
    write_pyramidal_tiff(Path(path), pyramid, mpp, compression="zlib")
    return Fiducials(xy=xy, sigma=sigma, mpp=mpp, size=(width, height))


def locate_dots(image: np.ndarray, expected: np.ndarray, radius: float) -> np.ndarray:
    """Measured (x, y) of the dots expected near `expected` ((n, 2), this image's pixels).

    The intensity-weighted centroid of the darkness within `radius` of each expected
    position; NaN for dots whose window leaves the image (their centroid would be cut).
    """
    grey = image[..., :3].astype(np.float64).mean(axis=2)
    dark = np.clip(GLASS - grey, 0, None)
    h, w = dark.shape
    r = int(np.ceil(radius))
    found = np.full(expected.shape, np.nan)
    for i, (x, y) in enumerate(expected):
        x0, y0 = int(np.floor(x)) - r, int(np.floor(y)) - r
        x1, y1 = int(np.floor(x)) + r + 1, int(np.floor(y)) + r + 1
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            continue
        window = dark[y0:y1, x0:x1]
        total = window.sum()
        if total <= 0:
            continue
        cx = (window.sum(axis=0) * (np.arange(x0, x1) + 0.5)).sum() / total
        cy = (window.sum(axis=1) * (np.arange(y0, y1) + 0.5)).sum() / total
        found[i] = cx, cy
    return found


def read_errors(
    image: np.ndarray, origin: tuple[float, float], scale: float, truth: Fiducials
) -> np.ndarray:
    """Distances (pixels of `image`) between each whole dot in `image` and its true place.

    `image` was read with its top-left pixel's corner at `origin` (pixels of the
    image's own resolution) and `scale` level-0 pixels per pixel.
    """
    expected = truth.xy / scale - np.asarray(origin, np.float64)
    h, w = image.shape[:2]
    reach = 4 * truth.sigma / scale
    inside = (
        (expected[:, 0] > reach)
        & (expected[:, 1] > reach)
        & (expected[:, 0] < w - reach)
        & (expected[:, 1] < h - reach)
    )
    found = locate_dots(image, expected[inside], radius=reach)
    return np.hypot(*(found - expected[inside]).T)

"""The patch grid, and the tissue fraction of a box: one home for dense, tile and synthetic grids.

Boxes tile an extent from an origin with a stride; the last row and column are the
first whose box reaches the edge, so every pixel is covered; boxes may extend past
the edge (read as background, clipped by the merge). `cover` lays out that grid;
dense inference (`make_grid`), tile inference (`histoflow.tiles.grid`) and the
synthetic raw stores (`histoflow.synthetic.raw`) all use it.

The tissue fraction of a box has one definition, `area_fraction`: the exact share of
the box's area covered by tissue, taking the mask as piecewise constant at its own
resolution (area outside the mask counts as glass). Dense patches
(`inference.min_tissue_fraction`, through `box_tissue_fraction`) and tiles
(`tiles.min_tissue_fraction` and the stores' `tissue_ratio`) both use it, so the same
box over the same mask has the same fraction in both stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from histoflow.errors import ConfigError


@dataclass(frozen=True)
class PatchGrid:
    """The kept output boxes of a dense grid, with their grid cells and geometry."""

    boxes: np.ndarray  # (N, 4) int64 output boxes x0, y0, x1, y1, model pixels, row-major
    grid: np.ndarray  # (N, 2) int64 row, col
    grid_shape: tuple[int, int]  # rows, cols of the full grid (before the tissue filter)
    stride: tuple[int, int]  # sy, sx
    margin: tuple[int, int]  # context rows, cols on each side of an output box

    def input_boxes(self) -> np.ndarray:
        """The output boxes grown by the context margin: what the model reads."""
        my, mx = self.margin
        return self.boxes + np.array([-mx, -my, mx, my], dtype=np.int64)


def positions(extent: int, size: int, stride: int) -> np.ndarray:
    """Start positions 0, s, 2s, ... up to the first box that reaches `extent`."""
    count = 1 if extent <= size else math.ceil((extent - size) / stride) + 1
    return np.arange(count, dtype=np.int64) * stride


def cover(
    shape: tuple[int, int],
    patch: tuple[int, int],
    stride: tuple[int, int],
    origin: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Row-major grid covering `shape` (H, W) from `origin` (y, x).

    Returns boxes (N, 4) int64 x0, y0, x1, y1, their cells (N, 2) int64 row, col, and
    the grid's (rows, cols).
    """
    (height, width), (h, w), (sy, sx), (oy, ox) = shape, patch, stride, origin
    ys, xs = positions(height - oy, h, sy), positions(width - ox, w, sx)
    rows, cols = np.meshgrid(np.arange(len(ys)), np.arange(len(xs)), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    x0, y0 = ox + xs[cols], oy + ys[rows]
    boxes = np.stack([x0, y0, x0 + w, y0 + h], axis=1).astype(np.int64).reshape(-1, 4)
    cells = np.stack([rows, cols], axis=1).astype(np.int64).reshape(-1, 2)
    return boxes, cells, (len(ys), len(xs))


def box_tissue_fraction(
    boxes: np.ndarray, mask: np.ndarray, scale_to_mask: tuple[float, float]
) -> np.ndarray:
    """`area_fraction` of integer boxes (N, 4) x0, y0, x1, y1 given in model pixels.

    `scale_to_mask` is (sx, sy): mask pixels per model pixel.
    """
    sx, sy = scale_to_mask
    return area_fraction(np.asarray(boxes, np.float64) * [sx, sy, sx, sy], mask)


def area_fraction(boxes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) float32 exact share of each box's area covered by tissue.

    `boxes` (N, 4) float x0, y0, x1, y1 are in mask pixels (fractional edges allowed).
    The mask is taken as piecewise constant at its own resolution, so a summed-area
    table interpolated bilinearly is exact; area outside the mask counts as no tissue.
    """
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    sat = summed_area(mask)
    covered = (
        _sat_at(sat, y1, x1) - _sat_at(sat, y0, x1) - _sat_at(sat, y1, x0) + _sat_at(sat, y0, x0)
    )
    ratio = covered / ((x1 - x0) * (y1 - y0))
    return np.clip(ratio, 0.0, 1.0).astype(np.float32)


def summed_area(mask: np.ndarray) -> np.ndarray:
    """(h + 1, w + 1) float64 table: S[i, j] = sum of mask[:i, :j]."""
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.float64)
    sat[1:, 1:] = np.asarray(mask, np.float64).cumsum(0).cumsum(1)
    return sat


def _sat_at(sat: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The integral of the mask over [0, x) x [0, y) at fractional (y, x), clamped to the mask."""
    h, w = sat.shape[0] - 1, sat.shape[1] - 1
    y = np.clip(y, 0, h)
    x = np.clip(x, 0, w)
    iy = np.minimum(np.floor(y).astype(np.int64), max(h - 1, 0))
    ix = np.minimum(np.floor(x).astype(np.int64), max(w - 1, 0))
    fy, fx = y - iy, x - ix
    iy1, ix1 = np.minimum(iy + 1, h), np.minimum(ix + 1, w)
    return (
        sat[iy, ix] * (1 - fy) * (1 - fx)
        + sat[iy1, ix] * fy * (1 - fx)
        + sat[iy, ix1] * (1 - fy) * fx
        + sat[iy1, ix1] * fy * fx
    )


def check_stride(stride: tuple[int, int], patch_output: tuple[int, int]) -> None:
    """A dense stride must be positive and at most the output patch (no unpredicted gaps)."""
    (sy, sx), (oh, ow) = stride, patch_output
    if sy <= 0 or sx <= 0:
        raise ConfigError(f"config field 'inference.stride': must be positive, got {[sy, sx]}")
    if sy > oh or sx > ow:
        raise ConfigError(
            f"config field 'inference.stride': {[sy, sx]} is larger than the model's output "
            f"patch {[oh, ow]}; pixels between patches would never be predicted"
        )


def make_grid(
    shape: tuple[int, int],
    patch_input: tuple[int, int],
    patch_output: tuple[int, int],
    stride: tuple[int, int] | None = None,
    mask: np.ndarray | None = None,
    scale_to_mask: tuple[float, float] | None = None,
    min_tissue: float = 0.0,
) -> PatchGrid:
    """Dense grid over a slide of `shape` (H, W) model pixels; keep boxes with enough tissue.

    The stride defaults to the output patch (no overlap); input boxes are the output
    boxes grown by the context margin.
    """
    stride = tuple(stride or patch_output)
    check_stride(stride, patch_output)
    boxes, cells, grid_shape = cover(shape, patch_output, stride)
    if mask is not None:
        keep = box_tissue_fraction(boxes, mask, scale_to_mask) >= max(min_tissue, 1e-12)
        boxes, cells = boxes[keep], cells[keep]
    oh, ow = patch_output
    margin = ((patch_input[0] - oh) // 2, (patch_input[1] - ow) // 2)
    return PatchGrid(boxes=boxes, grid=cells, grid_shape=grid_shape, stride=stride, margin=margin)


def max_overlap(patch_output: tuple[int, int], stride: tuple[int, int]) -> int:
    """The most patches of a grid with this stride that cover one output pixel."""
    (oh, ow), (sy, sx) = patch_output, stride
    return -(-oh // sy) * -(-ow // sx)


def covered_pixels(boxes: np.ndarray, shape: tuple[int, int]) -> int:
    """Pixels of the slide (H, W) that at least one output box covers.

    Exact for boxes that do not overlap (the default stride, the output patch); with
    overlapping boxes the sum of their clipped areas, an upper bound.
    """
    if not len(boxes):
        return 0
    height, width = shape
    clipped = np.clip(boxes, 0, [width, height, width, height])
    area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    return int(min(area.sum(), height * width))

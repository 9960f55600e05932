"""The patch grid at the model's resolution, filtered by the tissue mask.

Output boxes tile the slide from the origin with a stride (default: the output
size); the last row and column are the first whose box reaches the slide edge, so
every pixel is covered; boxes may extend past the edge (read as background, clipped
by the merge). Input boxes are the output boxes grown by the context margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from histoflow.errors import ConfigError


@dataclass(frozen=True)
class PatchGrid:
    boxes: np.ndarray  # (N, 4) int64 output boxes x0, y0, x1, y1, model pixels, row-major
    grid: np.ndarray  # (N, 2) int64 row, col
    grid_shape: tuple[int, int]  # rows, cols of the full grid (before the tissue filter)
    stride: tuple[int, int]  # sy, sx
    margin: tuple[int, int]  # context rows, cols on each side of an output box

    def input_boxes(self) -> np.ndarray:
        my, mx = self.margin
        return self.boxes + np.array([-mx, -my, mx, my], dtype=np.int64)


def positions(extent: int, size: int, stride: int) -> np.ndarray:
    """Start positions 0, s, 2s, ... up to the first box that reaches `extent`."""
    count = 1 if extent <= size else math.ceil((extent - size) / stride) + 1
    return np.arange(count, dtype=np.int64) * stride


def tissue_fraction(
    boxes: np.ndarray, mask: np.ndarray, scale_to_mask: tuple[float, float]
) -> np.ndarray:
    """Fraction of each box (model pixels) covered by tissue, from an integral image.

    `scale_to_mask` is (sx, sy): mask pixels per model pixel. Box edges are rounded
    to the mask grid; parts outside the mask count as no tissue.
    """
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    sx, sy = scale_to_mask
    ux0 = np.floor(boxes[:, 0] * sx + 1e-9).astype(np.int64)
    uy0 = np.floor(boxes[:, 1] * sy + 1e-9).astype(np.int64)
    ux1 = np.maximum(np.ceil(boxes[:, 2] * sx - 1e-9).astype(np.int64), ux0 + 1)
    uy1 = np.maximum(np.ceil(boxes[:, 3] * sy - 1e-9).astype(np.int64), uy0 + 1)
    x0, x1 = np.clip(ux0, 0, w), np.clip(ux1, 0, w)
    y0, y1 = np.clip(uy0, 0, h), np.clip(uy1, 0, h)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return inside / ((ux1 - ux0) * (uy1 - uy0))


def make_grid(
    shape: tuple[int, int],
    patch_input: tuple[int, int],
    patch_output: tuple[int, int],
    stride: tuple[int, int] | None = None,
    mask: np.ndarray | None = None,
    scale_to_mask: tuple[float, float] | None = None,
    min_tissue: float = 0.0,
) -> PatchGrid:
    """Grid over a slide of `shape` (H, W) model pixels; keep boxes with enough tissue."""
    oh, ow = patch_output
    sy, sx = stride or (oh, ow)
    if sy <= 0 or sx <= 0:
        raise ConfigError(f"config field 'inference.stride': must be positive, got {[sy, sx]}")
    if sy > oh or sx > ow:
        raise ConfigError(
            f"config field 'inference.stride': {[sy, sx]} is larger than the model's output "
            f"patch {[oh, ow]}; pixels between patches would never be predicted"
        )
    ys, xs = positions(shape[0], oh, sy), positions(shape[1], ow, sx)
    rows, cols = np.meshgrid(np.arange(len(ys)), np.arange(len(xs)), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    boxes = np.stack([xs[cols], ys[rows], xs[cols] + ow, ys[rows] + oh], axis=1)
    if mask is not None:
        keep = tissue_fraction(boxes, mask, scale_to_mask) >= max(min_tissue, 1e-12)
        boxes, rows, cols = boxes[keep], rows[keep], cols[keep]
    margin = ((patch_input[0] - oh) // 2, (patch_input[1] - ow) // 2)
    return PatchGrid(
        boxes=boxes.astype(np.int64),
        grid=np.stack([rows, cols], axis=1).astype(np.int64),
        grid_shape=(len(ys), len(xs)),
        stride=(sy, sx),
        margin=margin,
    )

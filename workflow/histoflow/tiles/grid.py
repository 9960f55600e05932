"""The tile grid of a slide (or page) at the model's resolution, and each tile's tissue ratio.

Tiles are `tile_size` pixels square at `mpp`, laid out from the top-left corner with
`stride` pixels between origins (stride == tile_size: no overlap); the last row and
column may extend past the slide edge (the reader pads with background). Coordinates
that leave the workflow are level-0 (x, y) of each tile's top-left corner.

The tissue ratio is the exact area fraction of the tile covered by the tissue mask,
taking the mask as piecewise constant at its own resolution: a summed-area table
interpolated bilinearly is exact for such a mask, so the ratio does not depend on
how the tile boundaries fall on mask pixels. Area outside the slide counts as no
tissue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    dimensions: tuple[int, int]  # (W, H) level 0
    slide_mpp: float  # level-0 µm/px
    mpp: float  # tile µm/px
    tile_size: int  # px at mpp
    stride: int  # px at mpp

    def __post_init__(self):
        if self.tile_size < 1 or not 1 <= self.stride <= self.tile_size:
            raise ValueError(f"need 1 <= stride <= tile_size, got {self.stride}, {self.tile_size}")

    @property
    def scale(self) -> float:
        """Level-0 pixels per pixel at `mpp`."""
        return self.mpp / self.slide_mpp

    @property
    def size_at_mpp(self) -> tuple[int, int]:
        """(W, H) of the slide at `mpp`, rounded up."""
        w, h = self.dimensions
        return math.ceil(w / self.scale - 1e-9), math.ceil(h / self.scale - 1e-9)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols): enough tiles to cover the whole slide."""
        w, h = self.size_at_mpp

        def n(length: int) -> int:
            return max(1, math.ceil((length - self.tile_size) / self.stride - 1e-9) + 1)

        return n(h), n(w)

    @property
    def tile_size_level0(self) -> int:
        return round(self.tile_size * self.scale)

    def origins(self) -> np.ndarray:
        """(rows * cols, 2) int64 (x, y) of every tile's top-left at `mpp`, row-major."""
        rows, cols = self.shape
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        return np.stack([xs.ravel(), ys.ravel()], 1).astype(np.int64) * self.stride

    def level0(self, origins: np.ndarray) -> np.ndarray:
        """Level-0 (x, y) of tile origins at `mpp` (rounded to whole pixels)."""
        return np.round(np.asarray(origins, np.float64) * self.scale).astype(np.int64)

    def tissue_ratio(self, mask: np.ndarray, mask_scale: tuple[float, float]) -> np.ndarray:
        """(rows * cols,) float32 tissue fraction of every tile, row-major.

        `mask` is a boolean (h, w) mask, `mask_scale` (sx, sy) its level-0 px per mask px.
        """
        origins = self.origins().astype(np.float64) * self.scale
        span = self.tile_size * self.scale
        sx, sy = mask_scale
        x0, y0 = origins[:, 0] / sx, origins[:, 1] / sy
        x1, y1 = x0 + span / sx, y0 + span / sy
        sat = summed_area(mask)
        covered = (
            _sat_at(sat, y1, x1)
            - _sat_at(sat, y0, x1)
            - _sat_at(sat, y1, x0)
            + _sat_at(sat, y0, x0)
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

"""The tile grid of a slide (or page) at the model's resolution, and each tile's tissue ratio.

Tiles are `tile_size` pixels square at `mpp`, laid out from the top-left corner with
`stride` pixels between origins (stride == tile_size: no overlap) by the shared patch
grid (`histoflow.inference.grid.cover`); the last row and column may extend past the
slide edge (the reader pads with background). Coordinates that leave the workflow
are level-0 (x, y) of each tile's top-left corner.

The tissue ratio is the exact area fraction of the tile covered by the tissue mask
(`histoflow.inference.grid.area_fraction`), so it does not depend on how the tile
boundaries fall on mask pixels. Area outside the slide counts as no tissue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from histoflow.inference.grid import area_fraction, cover


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of `tile_size` px at `mpp` over a slide of level-0 `dimensions`."""

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

    def _cover(self) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        w, h = self.size_at_mpp
        size, step = (self.tile_size, self.tile_size), (self.stride, self.stride)
        return cover((h, w), size, step)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols): enough tiles to cover the whole slide."""
        return self._cover()[2]

    @property
    def tile_size_level0(self) -> int:
        """The tile side in level-0 pixels (rounded)."""
        return round(self.tile_size * self.scale)

    def origins(self) -> np.ndarray:
        """(rows * cols, 2) int64 (x, y) of every tile's top-left at `mpp`, row-major."""
        return np.ascontiguousarray(self._cover()[0][:, :2])

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
        boxes = np.stack([x0, y0, x0 + span / sx, y0 + span / sy], axis=1)
        return area_fraction(boxes, mask)

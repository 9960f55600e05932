"""Large pyramidal TIFF slides made by mosaicking crops of a real slide, for benchmarks.

Blocks of `block` px are either a (flipped/rotated) crop of the source slide or glass
background, chosen by a seeded generator; tiles are assembled on the fly and
streamed to tifffile level by level, so memory stays at a few blocks whatever the
slide size. OpenSlide reads the result as a generic tiled TIFF with its mpp.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from histoflow.slide import open_slide
from histoflow.synthetic.writers import TiledLevel, write_pyramidal_tiff

BACKGROUND_RGB = (242, 242, 240)


def _source_crops(source: str | os.PathLike, mpp: float, block: int) -> list[np.ndarray]:
    """Up to 8 block-sized variants (crops, flips, rotations) of the source at `mpp`."""
    with open_slide(source) as slide:
        w, h = slide.size_at(mpp)
        side = min(block, w, h)
        crops = []
        for y0, x0 in [(0, 0), (h - side, w - side)]:
            crops.append(slide.read_region(x0, y0, side, side, mpp))
    out = []
    for crop in crops:
        if side != block:
            crop = np.asarray(Image.fromarray(crop).resize((block, block), Image.BILINEAR))
        for k in range(4):
            out.append(np.ascontiguousarray(np.rot90(crop, k)))
    return out


class Mosaic:
    """A seeded layout of crop variants and glass blocks, rendered region by region."""

    def __init__(
        self,
        crops: list[np.ndarray],
        size: int | tuple[int, int],
        block: int,
        background: float,
        seed: int,
    ):
        rng = np.random.default_rng(seed)
        # (height, width); a square for one number.
        self.shape = (size, size) if isinstance(size, int) else tuple(size)
        n = tuple(math.ceil(s / block) for s in self.shape)
        # -1 = glass; otherwise the index of the crop variant in that block.
        self.layout = np.where(rng.random(n) < background, -1, rng.integers(0, len(crops), n))
        self.crops = crops
        self.block = block
        self._levels: dict[int, list[np.ndarray]] = {}

    def _crops_at(self, level: int) -> list[np.ndarray]:
        if level not in self._levels:
            side = self.block >> level
            self._levels[level] = [
                np.asarray(Image.fromarray(c).resize((side, side), Image.BOX)) for c in self.crops
            ]
        return self._levels[level]

    def region(self, level: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """The (h, w) RGB region at (y0, x0) of `level`."""
        out = np.empty((h, w, 3), np.uint8)
        out[:] = BACKGROUND_RGB
        side = self.block >> level
        crops = self._crops_at(level)
        for by in range(y0 // side, (y0 + h - 1) // side + 1):
            for bx in range(x0 // side, (x0 + w - 1) // side + 1):
                if by >= self.layout.shape[0] or bx >= self.layout.shape[1]:
                    continue
                idx = self.layout[by, bx]
                if idx < 0:
                    continue
                ys, xs = max(y0, by * side), max(x0, bx * side)
                ye, xe = min(y0 + h, (by + 1) * side), min(x0 + w, (bx + 1) * side)
                out[ys - y0 : ye - y0, xs - x0 : xe - x0] = crops[idx][
                    ys - by * side : ye - by * side, xs - bx * side : xe - bx * side
                ]
        return out

    def tiles(self, level: int, tile: int) -> Iterator[np.ndarray]:
        """The tiles of `level`, row-major, each `tile` x `tile` (padded with glass)."""
        height, width = (math.ceil(s / 2**level) for s in self.shape)
        for y0 in range(0, height, tile):
            for x0 in range(0, width, tile):
                yield self.region(level, y0, x0, tile, tile)

    def level(self, level: int, tile: int) -> TiledLevel:
        """Pyramid level `level` (2**level downsampling) for the TIFF writer."""
        shape = tuple(math.ceil(s / 2**level) for s in self.shape)
        return TiledLevel(shape, self.tiles(level, tile))


def write_mosaic_tiff(
    path: str | os.PathLike,
    source: str | os.PathLike,
    size: int | tuple[int, int] = 16384,
    mpp: float = 0.5,
    block: int = 2048,
    tile: int = 256,
    background: float = 0.3,
    seed: int = 0,
) -> Path:
    """Write a pyramidal JPEG-tiled TIFF at `mpp` (levels down to ≤1024 px), `size` x
    `size` or `size` = (height, width); `background` is the share of glass blocks."""
    mosaic = Mosaic(_source_crops(source, mpp, block), size, block, background, seed)
    levels = max(1, math.ceil(math.log2(max(max(mosaic.shape) / 1024, 1))) + 1)
    # A block must halve to whole pixels at every level.
    levels = min(levels, int(math.log2(block)) + 1)
    return write_pyramidal_tiff(
        path,
        (mosaic.level(i, tile) for i in range(levels)),
        mpp,
        tile=tile,
        compression="jpeg",
        compressionargs={"level": 90},
        bigtiff=True,
    )

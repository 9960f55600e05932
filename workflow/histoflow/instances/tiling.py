"""Tile grid over the maps and the rule that decides which tile reports an object.

Each tile has a core (the grid cell; cores partition the slide) and a window (the
core grown by `margin` on every side, clipped to the slide) that is read and
post-processed. A tile keeps an object if and only if

  1. its centroid (exact: integer pixel sums) lies in the tile's core, half-open, and
  2. its box stays at least `halo` pixels away from every window edge that is not the
     slide edge (halo >= 1, so an object cut by the window is never kept).

Rule 1 makes ownership unique, so no object is reported twice; rule 2 keeps only
objects whose pixels and post-processing context (filter reach, `Task.halo`) lie in
the window, so they come out as in a whole-map pass and never cut. An object whose box
is at most `margin - halo + 1` pixels across always passes rule 2 in the tile that owns
it. A larger object passes only if it happens to sit far enough from its owner's
window edges; otherwise no tile reports it and it is counted as `truncated`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histoflow.instances.objects import LabelStats


@dataclass(frozen=True)
class Tile:
    """One cell of the grid: its core and the window read around it."""

    index: int
    row: int
    col: int
    core: tuple[int, int, int, int]  # y0, y1, x0, x1 (end exclusive), model pixels
    window: tuple[int, int, int, int]

    @property
    def window_shape(self) -> tuple[int, int]:
        """(height, width) of the window."""
        return self.window[1] - self.window[0], self.window[3] - self.window[2]


def round_tile_shape(
    tile_shape: tuple[int, int], patch_output: tuple[int, int] | None
) -> tuple[int, int]:
    """Tile shape rounded to the nearest multiple (at least one) of the patch output, so
    tile seams fall on patch seams, where the merged maps change least."""
    if not patch_output or min(patch_output) <= 0:
        return int(tile_shape[0]), int(tile_shape[1])
    return tuple(
        max(int(p), round(int(t) / int(p)) * int(p))
        for t, p in zip(tile_shape, patch_output, strict=True)
    )


def tile_grid(shape: tuple[int, int], tile_shape: tuple[int, int], margin: int) -> list[Tile]:
    """Row-major tiles covering `shape` (H, W)."""
    H, W = shape
    th, tw = tile_shape
    tiles = []
    for r, y0 in enumerate(range(0, H, th)):
        for c, x0 in enumerate(range(0, W, tw)):
            y1, x1 = min(y0 + th, H), min(x0 + tw, W)
            window = (
                max(y0 - margin, 0),
                min(y1 + margin, H),
                max(x0 - margin, 0),
                min(x1 + margin, W),
            )
            tiles.append(Tile(len(tiles), r, c, (y0, y1, x0, x1), window))
    return tiles


def ownership(
    tile: Tile, shape: tuple[int, int], stats: LabelStats, halo: int
) -> tuple[np.ndarray, np.ndarray]:
    """(keep, truncated) masks over the window's objects.

    `truncated`: owned by this tile (centroid in core) but too close to a window edge
    to be trusted; no other tile reports it.
    """
    H, W = shape
    wy0, wy1, wx0, wx1 = tile.window
    cy0, cy1, cx0, cx1 = tile.core
    n = stats.area.astype(np.float64)
    # centroid = window origin + sum / n, tested without dividing
    in_core = (
        (stats.sum_y >= (cy0 - wy0) * n)
        & (stats.sum_y < (cy1 - wy0) * n)
        & (stats.sum_x >= (cx0 - wx0) * n)
        & (stats.sum_x < (cx1 - wx0) * n)
    )
    h = max(int(halo), 1)
    hh, ww = wy1 - wy0, wx1 - wx0
    by0, by1, bx0, bx1 = stats.bbox.T
    clear = np.ones(stats.n, bool)
    if wy0 > 0:
        clear &= by0 >= h
    if wy1 < H:
        clear &= by1 <= hh - h
    if wx0 > 0:
        clear &= bx0 >= h
    if wx1 < W:
        clear &= bx1 <= ww - h
    return in_core & clear, in_core & ~clear


def clearance(tile: Tile, shape: tuple[int, int], bbox: np.ndarray) -> np.ndarray:
    """Distance in pixels from each local box to the nearest window edge that is not the
    slide edge (large where there is none): how much context the object had."""
    H, W = shape
    wy0, wy1, wx0, wx1 = tile.window
    hh, ww = wy1 - wy0, wx1 - wx0
    big = np.iinfo(np.int64).max // 4
    by0, by1, bx0, bx1 = bbox.T
    d = np.full(len(bbox), big, np.int64)
    if wy0 > 0:
        d = np.minimum(d, by0)
    if wy1 < H:
        d = np.minimum(d, hh - by1)
    if wx0 > 0:
        d = np.minimum(d, bx0)
    if wx1 < W:
        d = np.minimum(d, ww - bx1)
    return d


def seam_candidates(tiles: list[Tile], bbox: np.ndarray, margin: int) -> np.ndarray:
    """Objects (model-pixel boxes y0, y1, x0, x1) within `margin` of an interior seam:
    the only ones that another tile's object can overlap."""
    if len(bbox) == 0 or len(tiles) == 1:
        return np.zeros(len(bbox), bool)
    ys = np.unique([t.core[0] for t in tiles if t.core[0] > 0])
    xs = np.unique([t.core[2] for t in tiles if t.core[2] > 0])

    def near(lo, hi, seams):
        if len(seams) == 0:
            return np.zeros(len(lo), bool)
        # first seam >= lo - margin; is it <= hi + margin?
        i = np.searchsorted(seams, lo - margin)
        i = np.minimum(i, len(seams) - 1)
        return (seams[i] >= lo - margin) & (seams[i] <= hi + margin)

    return near(bbox[:, 0], bbox[:, 1], ys) | near(bbox[:, 2], bbox[:, 3], xs)

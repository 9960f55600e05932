"""Whole-map extremes for the published HoVer-Net post-processing (method `hovernet`).

The published algorithm min-max normalises the hv maps, and then their Sobel
derivatives, by the extremes of the window it is given. Run tile by tile, each tile
would normalise by its own extremes, and a nucleus could be split or merged differently
from a whole-map pass. So before the tiles run, the whole map's extremes are found in
two passes over the hv head, one tile at a time (the maps' extremes over each tile
core, then their derivatives' over each core on the workers, the window's margin giving
the Sobel kernel its context), and every tile normalises by them. A single-tile run keeps the
window's own extremes, exactly as published.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Executor

import numpy as np

from histoflow.instances import tiling
from histoflow.instances.hovernet_published import HoverStats, gradients
from histoflow.instances.schedule import TilePlan, ordered_map, ordered_tiles
from histoflow.instances.tasks import Task
from histoflow.io.maps_zarr import MapsZarr


def _extremes(a: np.ndarray) -> tuple[float, float]:
    return float(a.min()), float(a.max())


def _join(a: tuple[float, float] | None, b: tuple[float, float]) -> tuple[float, float]:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]))


def map_extremes(maps: MapsZarr, head: str, plan: TilePlan, covered: frozenset[int]) -> HoverStats:
    """(lo, hi) of the horizontal and vertical channels of `head` over the whole map;
    the derivative fields are left empty (0, 0). Tiles not in `covered` hold 0."""
    h = v = None
    for t in ordered_tiles(plan.tiles):
        if t.index in covered:
            hv = maps.read_window([head], t.core)[head]
            found = _extremes(hv[..., 0]), _extremes(hv[..., 1])
        else:
            found = (0.0, 0.0), (0.0, 0.0)
        h, v = _join(h, found[0]), _join(v, found[1])
    return HoverStats(h, v, (0.0, 0.0), (0.0, 0.0))


def core_gradient_extremes(
    hv: np.ndarray, tile: tiling.Tile, ksize: int, base: HoverStats
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Extremes of the two normalised derivatives over the tile's core (in a worker)."""
    gx, gy = gradients(hv, ksize, base)
    wy0, _, wx0, _ = tile.window
    cy0, cy1, cx0, cx1 = tile.core
    core = (slice(cy0 - wy0, cy1 - wy0), slice(cx0 - wx0, cx1 - wx0))
    return _extremes(gx[core]), _extremes(gy[core])


def hover_stats(
    maps: MapsZarr,
    task: Task,
    plan: TilePlan,
    covered: frozenset[int],
    executor: Executor | None = None,
) -> HoverStats:
    """The whole map's extremes of the task's hv maps and of their derivatives, the
    derivatives tile by tile on the executor's workers. A window no patch covered (not
    in `covered`) is 0 everywhere, so its derivatives are 0."""
    head = task.heads["hv"]
    ksize = task.hover_params().ksize
    base = map_extremes(maps, head, plan, covered)

    def job(t: tiling.Tile):
        if t.index not in covered:
            return None
        return (maps.read_window([head], t.window)[head], t, ksize, base)

    dh = dv = None
    tiles = ordered_tiles(plan.tiles)
    for found in ordered_map(executor, core_gradient_extremes, (job(t) for t in tiles)):
        found = found or ((0.0, 0.0), (0.0, 0.0))
        dh, dv = _join(dh, found[0]), _join(dv, found[1])
    return dataclasses.replace(base, dh=dh, dv=dv)


def with_hover_stats(
    maps: MapsZarr,
    tasks: list[Task],
    plan: TilePlan,
    covered: frozenset[int],
    executor: Executor | None = None,
) -> list[Task]:
    """The tasks, those of method `hovernet` given the whole map's extremes when the map
    is cut into several tiles."""
    if len(plan.tiles) < 2:
        return tasks
    return [
        dataclasses.replace(t, hover_stats=hover_stats(maps, t, plan, covered, executor))
        if t.method == "hovernet"
        else t
        for t in tasks
    ]

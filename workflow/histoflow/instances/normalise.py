"""Whole-map extremes for the published HoVer-Net post-processing (method `hovernet`).

The published algorithm min-max normalises the hv maps, and then their Sobel
derivatives, by the extremes of the window it is given. Run tile by tile, each tile
would normalise by its own extremes, and a nucleus could be split or merged differently
from a whole-map pass. So before the tiles run, the whole map's extremes are found in
two passes over the hv head, one strip of tile windows at a time (the maps' extremes,
then their derivatives' over each tile core, the window's margin giving the Sobel
kernel its context), and every tile normalises by them. A single-tile run keeps the
window's own extremes, exactly as published.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from histoflow.instances.hovernet_published import HoverStats, gradients
from histoflow.instances.schedule import TilePlan, strips
from histoflow.instances.tasks import Task
from histoflow.io.maps_zarr import MapsZarr


def _extremes(a: np.ndarray) -> tuple[float, float]:
    return float(a.min()), float(a.max())


def _join(a: tuple[float, float] | None, b: tuple[float, float]) -> tuple[float, float]:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]))


def map_extremes(maps: MapsZarr, head: str, plan: TilePlan) -> HoverStats:
    """(lo, hi) of the horizontal and vertical channels of `head` over the whole map;
    the derivative fields are left empty (0, 0)."""
    h = v = None
    for strip in strips(plan.tiles):
        y0, y1 = strip[0].core[0], strip[0].core[1]
        hv = maps.read_rows([head], y0, y1)[head]
        h, v = _join(h, _extremes(hv[..., 0])), _join(v, _extremes(hv[..., 1]))
    return HoverStats(h, v, (0.0, 0.0), (0.0, 0.0))


def hover_stats(maps: MapsZarr, task: Task, plan: TilePlan) -> HoverStats:
    """The whole map's extremes of the task's hv maps and of their derivatives."""
    head = task.heads["hv"]
    ksize = task.hover_params().ksize
    base = map_extremes(maps, head, plan)
    dh = dv = None
    for strip in strips(plan.tiles):
        wy0, wy1 = strip[0].window[:2]
        rows = maps.read_rows([head], wy0, wy1)[head]
        for t in strip:
            gx, gy = gradients(rows[:, t.window[2] : t.window[3]], ksize, base)
            cy0, cy1, cx0, cx1 = t.core
            core = (slice(cy0 - wy0, cy1 - wy0), slice(cx0 - t.window[2], cx1 - t.window[2]))
            dh, dv = _join(dh, _extremes(gx[core])), _join(dv, _extremes(gy[core]))
    return dataclasses.replace(base, dh=dh, dv=dv)


def with_hover_stats(maps: MapsZarr, tasks: list[Task], plan: TilePlan) -> list[Task]:
    """The tasks, those of method `hovernet` given the whole map's extremes when the map
    is cut into several tiles."""
    if len(plan.tiles) < 2:
        return tasks
    return [
        dataclasses.replace(t, hover_stats=hover_stats(maps, t, plan))
        if t.method == "hovernet"
        else t
        for t in tasks
    ]

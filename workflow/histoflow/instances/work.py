"""The work of one tile: post-process its window, keep what the tile owns (in a worker).

Instance tasks keep the objects the ownership rule (`tiling`) gives this tile;
semantic tasks outline region pieces of the tile core and cut out the core of the
class map. Everything here is a function of the window's arrays, so a tile gives the
same result in any worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import shapely

from histoflow.instances import postprocess, regions, tiling
from histoflow.instances.objects import LabelStats, label_stats, object_polygons
from histoflow.instances.tasks import Task
from histoflow.io.instance_table import Objects


@dataclass
class TileResult:
    """What one tile reports: per task, owned objects or region pieces."""

    tile: int
    instances: dict[str, dict] = field(default_factory=dict)
    pieces: dict[str, regions.Pieces] = field(default_factory=dict)
    classmap: np.ndarray | None = None
    ownership_s: float = 0.0


def _region_tile(res: TileResult, tile: tiling.Tile, task: Task, arrays, shape) -> None:
    probs = arrays[task.heads["probability"]]
    cmap = postprocess.class_map(probs, arrays.get("coverage"))
    ignored = set(task.params["ignore_classes"])
    classes = [i for i, c in enumerate(task.classes) if c["name"] not in ignored]
    res.pieces[task.name] = regions.class_pieces(
        cmap, probs, tile.window, tile.core, shape, classes
    )
    wy0, _, wx0, _ = tile.window
    cy0, cy1, cx0, cx1 = tile.core
    res.classmap = cmap[cy0 - wy0 : cy1 - wy0, cx0 - wx0 : cx1 - wx0].copy()


def _owned_objects(
    labels: np.ndarray, stats: LabelStats, idx: np.ndarray, origin, task: Task, arrays, scale
) -> tuple[Objects, np.ndarray]:
    """The objects `idx` (0-based labels) in level-0 pixels, and their model-pixel boxes."""
    wy0, wx0 = origin
    types = arrays[task.heads["type"]] if "type" in task.heads else None
    class_id, prob = postprocess.classify(
        labels, stats.n, task, arrays[task.heads["probability"]], types
    )
    bbox = stats.bbox[idx]
    polys = object_polygons(labels, idx + 1, bbox, origin, scale, task.params["simplify_px"])
    area = stats.area[idx].astype(np.float64)
    cx = (stats.sum_x[idx] / np.maximum(area, 1) + wx0 + 0.5) * scale
    cy = (stats.sum_y[idx] / np.maximum(area, 1) + wy0 + 0.5) * scale
    model_box = bbox + np.array([wy0, wy0, wx0, wx0])  # y0, y1, x0, x1
    objects = Objects(
        class_id[idx],
        prob[idx],
        np.stack([cx, cy], axis=1),
        model_box[:, [2, 0, 3, 1]].astype(np.float64) * scale,
        area * scale * scale,
        shapely.to_wkb(polys) if len(polys) else np.empty(0, object),
        model_box[:, [0, 2]],
    )
    return objects, model_box


def _instance_tile(
    res: TileResult, tile: tiling.Tile, task: Task, arrays, shape, scale: float
) -> None:
    labels = postprocess.instance_labels(task, arrays)
    stats = label_stats(labels, int(labels.max()))
    t0 = time.perf_counter()
    keep, truncated = tiling.ownership(tile, shape, stats, task.halo)
    clear = tiling.clearance(tile, shape, stats.bbox[keep])
    res.ownership_s += time.perf_counter() - t0
    origin = (tile.window[0], tile.window[2])
    objects, model_box = _owned_objects(
        labels, stats, np.flatnonzero(keep), origin, task, arrays, scale
    )
    res.instances[task.name] = {
        "objects": objects,
        "model_box": model_box,
        "clearance": clear,
        "truncated": int(truncated.sum()),
    }


def process_tile(
    tile: tiling.Tile,
    arrays: dict[str, np.ndarray],
    tasks: list[Task],
    shape: tuple[int, int],
    scale: float,
) -> TileResult:
    """Post-process one window and keep what this tile owns (runs in a worker)."""
    res = TileResult(tile.index)
    for task in tasks:
        if task.kind == "regions":
            _region_tile(res, tile, task, arrays, shape)
        else:
            _instance_tile(res, tile, task, arrays, shape, scale)
    return res

"""Assembly in the main process: tile results -> one set of objects per task.

Instance tasks: objects near seams are checked against each other (STRtree) and the
rare overlap between tiles is resolved. Semantic tasks: pieces touching a seam are
joined, then small regions dropped, small holes filled and outlines simplified. The
class map is written core by core as tiles arrive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
import zarr

from histoflow.instances import dedup, postprocess, regions, tiling
from histoflow.instances.schedule import TilePlan
from histoflow.instances.tasks import Task
from histoflow.instances.work import TileResult
from histoflow.io.instance_table import Objects

# Model px² of overlap that makes two objects from different tiles conflict.
MIN_OVERLAP_PX = 1.0


def create_classmap(
    path: Path, shape: tuple[int, int], tile_shape, task: Task, slide_attrs: dict
) -> zarr.Array:
    """The empty class map (uint8, NODATA where no tile wrote), one chunk per tile core."""
    H, W = shape
    arr = zarr.create_array(
        store=path,
        shape=(H, W),
        chunks=(min(tile_shape[0], H), min(tile_shape[1], W)),
        dtype="uint8",
        fill_value=postprocess.NODATA,
        zarr_format=3,
        dimension_names=["y", "x"],
    )
    arr.attrs.update(
        {"task": task.name, "classes": task.classes, "nodata": postprocess.NODATA, **slide_attrs}
    )
    return arr


@dataclass
class Assembly:
    """Collects tile results as they arrive, then finishes each task."""

    tasks: list[Task]
    plan: TilePlan
    classmap: zarr.Array | None = None
    found: dict[str, list[tuple[int, dict]]] = field(default_factory=dict)
    pieces: dict[str, list[regions.Pieces]] = field(default_factory=dict)
    conflicts: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    ownership_s: float = 0.0
    dedup_s: float = 0.0

    def add(self, res: TileResult) -> None:
        """Keep one tile's objects and pieces; write its class map core."""
        self.ownership_s += res.ownership_s
        for name, r in res.instances.items():
            self.found.setdefault(name, []).append((res.tile, r))
        for name, p in res.pieces.items():
            self.pieces.setdefault(name, []).append(p)
        if self.classmap is not None and res.classmap is not None:
            y0, y1, x0, x1 = self.plan.tiles[res.tile].core
            self.classmap[y0:y1, x0:x1] = res.classmap

    def finish(self, task: Task, scale: float) -> Objects:
        """The task's objects; instance tasks also count conflicts and truncated views."""
        t0 = time.perf_counter()
        if task.kind == "regions":
            objs = finish_regions(
                task, regions.Pieces.concat(self.pieces.get(task.name, [])), scale
            )
            self.dedup_s += time.perf_counter() - t0
            return objs
        found = self.found.get(task.name, [])
        objs, self.conflicts[task.name], t_dedup = finish_instances(found, self.plan, scale)
        self.dedup_s += t_dedup
        self.truncated[task.name] = sum(r["truncated"] for _, r in found)
        return objs


def _concat_found(found: list[tuple[int, dict]]):
    objs = Objects.concat([r["objects"] for _, r in found])
    tile_of = np.concatenate([np.full(len(r["objects"]), t) for t, r in found])
    model_box = np.concatenate([r["model_box"] for _, r in found]).reshape(-1, 4)
    clear = np.concatenate([r["clearance"] for _, r in found])
    return objs, tile_of, model_box, clear


def finish_instances(
    found: list[tuple[int, dict]], plan: TilePlan, scale: float
) -> tuple[Objects, int, float]:
    """The tiles' objects without cross-seam overlaps: (objects, dropped, seconds)."""
    if not found:
        return Objects.empty(), 0, 0.0
    objs, tile_of, model_box, clear = _concat_found(found)
    t0 = time.perf_counter()
    cand = np.flatnonzero(tiling.seam_candidates(plan.tiles, model_box, plan.margin))
    drop = np.zeros(len(objs), bool)
    if len(cand) > 1:
        geoms = shapely.from_wkb(objs.contour[cand])
        # Preferred: more context, then larger, then earlier tile / row (deterministic).
        order = np.lexsort((cand, tile_of[cand], -objs.area[cand], -clear[cand]))
        rank = np.empty(len(cand), np.int64)
        rank[order] = np.arange(len(cand))
        drop[cand] = dedup.resolve_overlaps(
            geoms, tile_of[cand], rank, MIN_OVERLAP_PX * scale * scale
        )
    t_dedup = time.perf_counter() - t0
    return objs.take(~drop), int(drop.sum()), t_dedup


def _joined_pieces(task: Task, pieces: regions.Pieces) -> regions.Pieces:
    done = pieces.take(~pieces.seam)
    merged = dedup.merge_pieces(pieces.take(pieces.seam))
    allp = regions.Pieces.concat([done, merged])
    return allp.take(allp.area >= max(task.px.get("min_area") or 0.0, 1.0))


def _region_outlines(task: Task, geoms: np.ndarray) -> np.ndarray:
    max_hole = task.px.get("min_hole") or 0.0
    if max_hole > 0:
        geoms = np.array([_fill_holes(g, max_hole) for g in geoms], dtype=object)
    if task.params["simplify_px"] > 0:
        # Drop the collinear vertices seams leave first, so tiled and whole-map
        # outlines simplify alike.
        geoms = shapely.normalize(shapely.simplify(geoms, 0.0))
        geoms = shapely.simplify(geoms, task.params["simplify_px"], preserve_topology=True)
    return geoms


def finish_regions(task: Task, pieces: regions.Pieces, scale: float) -> Objects:
    """Region objects from the tiles' pieces, joined across seams, in level-0 pixels."""
    allp = _joined_pieces(task, pieces)
    if len(allp.geoms) == 0:
        return Objects.empty()
    geoms = _region_outlines(task, allp.geoms)
    bounds = shapely.bounds(geoms)
    geoms = shapely.transform(geoms, lambda c: c * scale)
    area = allp.area
    return Objects(
        allp.class_id.astype(np.int32),
        (allp.prob / area).astype(np.float32),
        np.stack([(allp.sum_x / area + 0.5) * scale, (allp.sum_y / area + 0.5) * scale], 1),
        bounds * scale,
        area * scale * scale,
        shapely.to_wkb(geoms),
        np.floor(bounds[:, [1, 0]]).astype(np.int64),
    )


def _fill_holes(geom, max_area: float):
    polys = shapely.get_parts(geom)
    out = []
    for p in polys:
        holes = [r for r in p.interiors if shapely.Polygon(r).area >= max_area]
        out.append(shapely.Polygon(p.exterior, holes))
    return out[0] if len(out) == 1 else shapely.MultiPolygon(out)

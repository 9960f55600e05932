"""extract_instances: maps.zarr -> instance table (+ class map), tile by tile.

The main process reads one strip of tile windows (a band of rows, full width) at a
time from maps.zarr and hands its tiles to the workers. Memory therefore grows with
slide width and tile height, not slide area.
Results come back in tile order, so the output does not depend on the worker count.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
import zarr

from histoflow.errors import ConfigError, HistoflowError
from histoflow.instances import dedup, postprocess, regions, tiling
from histoflow.instances.objects import label_stats, object_polygons
from histoflow.instances.table import Objects, build_table, write_table
from histoflow.instances.tasks import Task, tasks_from_card
from histoflow.io.atomic import atomic_output

log = logging.getLogger("histoflow.instances")

EXECUTORS = ("process", "thread")


@dataclass
class Options:
    tile_shape: tuple[int, int] | None = (2048, 2048)  # None: the whole map as one tile
    margin: int = 64
    workers: int = 1
    executor: str = "process"
    min_overlap_px: float = 1.0  # model px² of overlap that makes two objects conflict

    @classmethod
    def from_config(cls, cfg: dict, workers: int = 1) -> Options:
        shape = cfg.get("tile_shape", cls.tile_shape)
        return cls(
            tile_shape=None if shape is None else (int(shape[0]), int(shape[1])),
            margin=int(cfg.get("margin", cls.margin)),
            workers=max(1, int(workers)),
            executor=str(cfg.get("executor", cls.executor)),
        )


@dataclass
class Stats:
    tiles: int = 0
    tile_shape: tuple[int, int] = (0, 0)
    objects: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    conflicts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def dedup_share(self) -> float:
        """De-dup time over stage time: the cross-tile checks in the main process plus
        the ownership tests in the workers (spread over the workers)."""
        s = self.seconds
        total = s.get("total", 0.0)
        own = s.get("ownership_cpu", 0.0) / max(1, s.get("workers", 1))
        return (s.get("dedup", 0.0) + own) / total if total else 0.0


@dataclass
class TileResult:
    tile: int
    instances: dict[str, dict] = field(default_factory=dict)
    pieces: dict[str, regions.Pieces] = field(default_factory=dict)
    classmap: np.ndarray | None = None
    ownership_s: float = 0.0


@dataclass
class Maps:
    """maps.zarr opened for reading: attributes and head arrays, nothing loaded."""

    path: Path
    group: zarr.Group
    attrs: dict
    shape: tuple[int, int]
    scale: float
    mpp: float
    channels: dict[str, int]

    @classmethod
    def open(cls, path: str | Path) -> Maps:
        path = Path(path)
        try:
            group = zarr.open_group(path, mode="r")
        except Exception as exc:  # zarr raises several types for a missing/bad store
            raise HistoflowError(f"file '{path}': not a readable maps.zarr ({exc})") from exc
        attrs = dict(group.attrs)
        missing = [k for k in ("shape", "scale", "mpp", "model") if k not in attrs]
        if missing:
            raise HistoflowError(f"file '{path}': attributes missing: {', '.join(missing)}")
        with warnings.catch_warnings():
            # Snakemake leaves .snakemake_timestamp in directory outputs; not a member.
            warnings.filterwarnings("ignore", message=".*not recognized as a component")
            members = list(group.arrays())
        channels = {
            name: int(arr.shape[-1])
            for name, arr in members
            if name != "coverage" and arr.ndim == 3
        }
        return cls(
            path,
            group,
            attrs,
            (int(attrs["shape"][0]), int(attrs["shape"][1])),
            float(attrs["scale"]),
            float(attrs["mpp"]),
            channels,
        )

    def read_rows(self, names: list[str], y0: int, y1: int) -> dict[str, np.ndarray]:
        return {name: np.asarray(self.group[name][y0:y1]) for name in names}


def process_tile(
    tile: tiling.Tile,
    arrays: dict[str, np.ndarray],
    tasks: list[Task],
    shape: tuple[int, int],
    scale: float,
) -> TileResult:
    """Post-process one window and keep what this tile owns (runs in a worker)."""
    res = TileResult(tile.index)
    wy0, _, wx0, _ = tile.window
    for task in tasks:
        if task.kind == "regions":
            probs = arrays[task.heads["probability"]]
            cmap = postprocess.class_map(probs, arrays.get("coverage"))
            ignored = set(task.params["ignore_classes"])
            classes = [i for i, c in enumerate(task.classes) if c["name"] not in ignored]
            res.pieces[task.name] = regions.class_pieces(
                cmap, probs, tile.window, tile.core, shape, classes
            )
            cy0, cy1, cx0, cx1 = tile.core
            res.classmap = cmap[cy0 - wy0 : cy1 - wy0, cx0 - wx0 : cx1 - wx0].copy()
            continue
        labels = postprocess.instance_labels(task, arrays)
        n = int(labels.max())
        stats = label_stats(labels, n)
        t0 = time.perf_counter()
        keep, truncated = tiling.ownership(tile, shape, stats, task.halo)
        clear = tiling.clearance(tile, shape, stats.bbox[keep])
        res.ownership_s += time.perf_counter() - t0
        types = arrays[task.heads["type"]] if "type" in task.heads else None
        class_id, prob = postprocess.classify(
            labels, n, task, arrays[task.heads["probability"]], types
        )
        idx = np.flatnonzero(keep)
        bbox = stats.bbox[idx]
        polys = object_polygons(
            labels,
            idx + 1,
            bbox,
            (wy0, wx0),
            scale,
            task.params["simplify_px"],
        )
        area = stats.area[idx].astype(np.float64)
        cx = (stats.sum_x[idx] / np.maximum(area, 1) + wx0 + 0.5) * scale
        cy = (stats.sum_y[idx] / np.maximum(area, 1) + wy0 + 0.5) * scale
        model_box = bbox + np.array([wy0, wy0, wx0, wx0])  # y0, y1, x0, x1
        res.instances[task.name] = {
            "objects": Objects(
                class_id[idx],
                prob[idx],
                np.stack([cx, cy], axis=1),
                model_box[:, [2, 0, 3, 1]].astype(np.float64) * scale,
                area * scale * scale,
                shapely.to_wkb(polys) if len(polys) else np.empty(0, object),
                model_box[:, [0, 2]],
            ),
            "model_box": model_box,
            "clearance": clear,
            "truncated": int(truncated.sum()),
        }
    return res


def _strips(tiles: list[tiling.Tile]) -> list[list[tiling.Tile]]:
    rows: dict[int, list[tiling.Tile]] = {}
    for t in tiles:
        rows.setdefault(t.row, []).append(t)
    return [rows[r] for r in sorted(rows)]


def _make_executor(options: Options) -> Executor | None:
    if options.workers <= 1:
        return None
    if options.executor == "thread":
        return ThreadPoolExecutor(options.workers, thread_name_prefix="instances")
    # fork: scripts run as __main__ from a temporary file, which spawn would re-run.
    ex = ProcessPoolExecutor(options.workers, mp_context=multiprocessing.get_context("fork"))
    # Start the workers now, before zarr starts its I/O thread: forking a process
    # with threads is unsafe. (With fork, Python starts all workers on first submit.)
    ex.submit(int, 0).result()
    return ex


def _run_tiles(
    maps: Maps,
    tiles: list[tiling.Tile],
    tasks: list[Task],
    executor: Executor | None,
) -> Iterator[TileResult]:
    """Results in tile order, one strip of windows read at a time."""
    names = sorted({h for t in tasks for h in t.heads.values()})
    with_cov = any(t.kind == "regions" for t in tasks)
    read_names = names + (["coverage"] if with_cov else [])
    strips = _strips(tiles)

    def read(strip):
        y0, y1 = strip[0].window[0], strip[0].window[1]
        return maps.read_rows(read_names, y0, y1)

    def args(t: tiling.Tile, data):
        x0, x1 = t.window[2], t.window[3]
        return (t, {k: v[:, x0:x1] for k, v in data.items()}, tasks, maps.shape, maps.scale)

    if executor is None:
        for strip in strips:
            data = read(strip)
            for t in strip:
                yield process_tile(*args(t, data))
        return
    for strip in strips:
        # One strip in memory at a time: reading the next one while this one runs
        # would save ~2 % of the time for one more strip of RSS.
        data = read(strip)
        futures: list[Future] = [executor.submit(process_tile, *args(t, data)) for t in strip]
        del data
        for f in futures:
            yield f.result()
        del futures


def _progress(total: int):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc="tiles", unit="tile", mininterval=5.0, file=sys.stderr)


def extract(
    maps_path: str | Path,
    options: Options | None = None,
    classmap_path: str | Path | None = None,
) -> tuple[list[tuple[str, list[dict], Objects]], dict, Stats]:
    """Post-process maps.zarr tile by tile.

    Returns (task, classes, objects) in card order, the table metadata and stats. With
    a semantic task and `classmap_path`, the class map is written there atomically.
    """
    options = options or Options()
    if options.executor not in EXECUTORS:
        raise ConfigError(f"config field 'instances.executor': one of {', '.join(EXECUTORS)}")
    t_start = time.perf_counter()
    executor = _make_executor(options)
    try:
        maps = Maps.open(maps_path)
        tasks = tasks_from_card(maps.attrs["model"], maps.channels, maps.mpp)
        H, W = maps.shape
        if options.tile_shape is None:
            tile_shape, margin = (H, W), 0
        else:
            tile_shape = tiling.round_tile_shape(options.tile_shape, maps.attrs.get("patch_output"))
            margin = int(options.margin)
            if margin >= min(tile_shape):
                raise ConfigError(
                    f"config field 'instances.margin': {margin} px is not smaller than the tile "
                    f"{list(tile_shape)} (instances.tile_shape); each tile would read more "
                    "context than it owns: lower the margin or raise the tile shape"
                )
            need = max((t.halo for t in tasks if t.kind == "instances"), default=1)
            if margin <= need and (tile_shape[0] < H or tile_shape[1] < W):
                raise ConfigError(
                    f"config field 'instances.margin': {margin} px is too small; the "
                    f"post-processing reaches {need} px, so use at least {need + 1} "
                    "(and more than the largest object, in model pixels)"
                )
        tiles = tiling.tile_grid(maps.shape, tile_shape, margin)
        stats = Stats(tiles=len(tiles), tile_shape=tuple(tile_shape))
        log.info(
            "%s: %dx%d px at %.3g mpp, %d tasks (%s), %d tiles of %dx%d + margin %d, %d worker(s)",
            maps.path,
            W,
            H,
            maps.mpp,
            len(tasks),
            ", ".join(f"{t.name}:{t.method}" for t in tasks),
            len(tiles),
            tile_shape[1],
            tile_shape[0],
            margin,
            options.workers,
        )
        with contextlib.ExitStack() as stack:
            semantic = [t for t in tasks if t.kind == "regions"]
            cmap_arr = None
            if semantic and classmap_path is not None:
                tmp = stack.enter_context(atomic_output(classmap_path))
                cmap_arr = _create_classmap(tmp, maps, semantic[0], tile_shape)
            found = {t.name: [] for t in tasks}
            pieces = {t.name: [] for t in semantic}
            own_s = 0.0
            bar = stack.enter_context(_progress(len(tiles)))
            for res in _run_tiles(maps, tiles, tasks, executor):
                own_s += res.ownership_s
                for name, r in res.instances.items():
                    found[name].append((res.tile, r))
                for name, p in res.pieces.items():
                    pieces[name].append(p)
                if cmap_arr is not None and res.classmap is not None:
                    y0, y1, x0, x1 = tiles[res.tile].core
                    cmap_arr[y0:y1, x0:x1] = res.classmap
                if bar is not None:
                    bar.update(1)
            t_tiles = time.perf_counter()
            per_task, t_dedup = [], 0.0
            for task in tasks:
                t0 = time.perf_counter()
                if task.kind == "regions":
                    objs = _finish_regions(task, regions.Pieces.concat(pieces[task.name]), maps)
                    t_dedup += time.perf_counter() - t0
                else:
                    objs, conflicts, t_d = _finish_instances(
                        task, found[task.name], tiles, margin, maps.scale, options
                    )
                    t_dedup += t_d
                    stats.conflicts[task.name] = conflicts
                    stats.truncated[task.name] = sum(r["truncated"] for _, r in found[task.name])
                stats.objects[task.name] = len(objs)
                per_task.append((task.name, task.classes, objs))
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    t_end = time.perf_counter()
    stats.seconds = {
        "tiles": t_tiles - t_start,
        "dedup": t_dedup,
        "ownership_cpu": own_s,
        "workers": options.workers,
        "total": t_end - t_start,
    }
    for name, n in stats.truncated.items():
        if n:
            log.warning(
                "task %s: %d object view(s) cut by the edge of their tile's context were "
                "dropped: objects larger than the margin are lost; raise instances.margin "
                "(now %d px) to keep them",
                name,
                n,
                margin,
            )
    for name, n in stats.conflicts.items():
        if n:
            log.info("task %s: %d overlapping object(s) across seams dropped", name, n)
    meta = {
        "model": maps.attrs["model"].get("name"),
        "mpp": maps.mpp,
        "slide_mpp": float(maps.attrs.get("slide_mpp", maps.mpp / maps.scale)),
        "scale": maps.scale,
        "shape": [H, W],
        "tile_shape": list(tile_shape),
        "margin": margin,
        "tasks": {t.name: t.classes for t in tasks},
        "methods": {t.name: t.method for t in tasks},
        "sample": maps.attrs.get("sample"),
    }
    return per_task, meta, stats


def _create_classmap(path: Path, maps: Maps, task: Task, tile_shape) -> zarr.Array:
    H, W = maps.shape
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
        {
            "task": task.name,
            "classes": task.classes,
            "nodata": postprocess.NODATA,
            "mpp": maps.mpp,
            "scale": maps.scale,
            "slide_mpp": float(maps.attrs.get("slide_mpp", maps.mpp / maps.scale)),
            "sample": maps.attrs.get("sample"),
        }
    )
    return arr


def _finish_instances(
    task: Task,
    found: list[tuple[int, dict]],
    tiles: list[tiling.Tile],
    margin: int,
    scale: float,
    options: Options,
) -> tuple[Objects, int, float]:
    if not found:
        return Objects.empty(), 0, 0.0
    objs = Objects.concat([r["objects"] for _, r in found])
    tile_of = np.concatenate([np.full(len(r["objects"]), t) for t, r in found])
    model_box = np.concatenate([r["model_box"] for _, r in found]).reshape(-1, 4)
    clear = np.concatenate([r["clearance"] for _, r in found])
    t0 = time.perf_counter()
    cand = np.flatnonzero(tiling.seam_candidates(tiles, model_box, margin))
    drop = np.zeros(len(objs), bool)
    if len(cand) > 1:
        geoms = shapely.from_wkb(objs.contour[cand])
        # Preferred: more context, then larger, then earlier tile / row (deterministic).
        order = np.lexsort((cand, tile_of[cand], -objs.area[cand], -clear[cand]))
        rank = np.empty(len(cand), np.int64)
        rank[order] = np.arange(len(cand))
        drop[cand] = dedup.resolve_overlaps(
            geoms, tile_of[cand], rank, options.min_overlap_px * scale * scale
        )
    t_dedup = time.perf_counter() - t0
    return objs.take(~drop), int(drop.sum()), t_dedup


def _finish_regions(task: Task, pieces: regions.Pieces, maps: Maps) -> Objects:
    scale = maps.scale
    done = pieces.take(~pieces.seam)
    merged = dedup.merge_pieces(pieces.take(pieces.seam))
    allp = regions.Pieces.concat([done, merged])
    keep = allp.area >= max(task.px.get("min_area") or 0.0, 1.0)
    allp = allp.take(keep)
    if len(allp.geoms) == 0:
        return Objects.empty()
    geoms = allp.geoms
    max_hole = task.px.get("min_hole") or 0.0
    if max_hole > 0:
        geoms = np.array([_fill_holes(g, max_hole) for g in geoms], dtype=object)
    if task.params["simplify_px"] > 0:
        # Drop the collinear vertices seams leave first, so tiled and whole-map
        # outlines simplify alike.
        geoms = shapely.normalize(shapely.simplify(geoms, 0.0))
        geoms = shapely.simplify(geoms, task.params["simplify_px"], preserve_topology=True)
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


def run(
    maps_path: str | Path,
    table_path: str | Path,
    classmap_path: str | Path | None = None,
    options: Options | None = None,
) -> Stats:
    """The stage: extract, then write the table atomically."""
    per_task, meta, stats = extract(maps_path, options, classmap_path)
    t0 = time.perf_counter()
    write_table(build_table(per_task), table_path, meta)
    stats.seconds["write"] = time.perf_counter() - t0
    log.info(
        "wrote %s: %s in %.1f s (de-dup %.1f%% of the stage)",
        table_path,
        ", ".join(f"{k}: {v} objects" for k, v in stats.objects.items()),
        stats.seconds["total"],
        100 * stats.dedup_share,
    )
    return stats

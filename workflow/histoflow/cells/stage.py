"""measure_cells as one call: instances.parquet + slide -> cells.parquet + graph.parquet.

Memory stays bounded whatever the slide: the instance table is cut into chunks of
contiguous rows (file order, which is top-left corner order within each task, so a
chunk covers a band of the slide), and a worker measures its chunk in batches of
`batch_rows` nuclei: each batch is rasterised at model resolution and its pixels'
colours come from the slide read at the model's mpp in fixed blocks of `read_block`
model pixels (plus a small frame of context for the resampling), only where nuclei are.
The worker keeps the blocks of the rows the next batch may still need, so each block is
read about once. Block positions are fixed on the slide, so a pixel's colour, and with
it every measurement, is the same whatever the batch size, chunking or number of
workers (tests/test_cells_stage.py: tiled == whole). Chunks run on `workers` processes
and are written in order. Only the centroids of the whole table are held at once, for
the neighbour counts and the Delaunay graph (`histoflow.cells.graph`).
"""

from __future__ import annotations

import itertools
import logging
import math
import multiprocessing
import time
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from histoflow import stains
from histoflow.cells import graph
from histoflow.cells.measure import (
    MEASUREMENT_COLUMNS,
    intensity_measurements,
    rasterise,
    shape_measurements,
)
from histoflow.config import schema_defaults
from histoflow.errors import ConfigError
from histoflow.inference.threads import release_heap
from histoflow.io.atomic import atomic_output
from histoflow.io.cell_table import (
    DEGREE,
    NEIGHBOURS_TOTAL,
    UNITS,
    CellTableWriter,
    neighbour_column,
    write_graph,
)
from histoflow.io.instance_table import InstanceTable, open_instance_table
from histoflow.io.rows import iter_rows, read_rows

log = logging.getLogger("histoflow.cells")

# Model pixels of context read around each block, so that resampling at the block's
# edge sees the same slide pixels as in its middle.
READ_FRAME = 4
# Instance-table columns copied into cells.parquet.
IDENTITY = ("id", "task", "class_id", "class_name", "probability", "centroid_x", "centroid_y")
# Batches of nuclei per chunk of work (one worker task, one block cache).
CHUNK_BATCHES = 8
# Bytes of slide blocks a worker's cache holds. A batch uses each block once (pixels are
# grouped by block), so the cache only carries blocks into the next batch; a cap of 1024
# blocks let it hold whole full-width rows, growing with the slide's width (0.8 MB a
# block of 512 px: 128 a row at 65536 px). At 32 MB (40 blocks) the full-size
# HoVer-Net-shaped run reads 8 % more blocks (3732 instead of 3452) and each worker
# peaks about 80 MB lower.
CACHE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class CellsOptions:
    """The config section `cells` (defaults from the schema)."""

    workers: int = 2
    batch_rows: int = 4096
    read_block: int = 512
    neighbour_radius_um: float = 50.0
    graph_max_edge_um: float | None = None
    stain_vectors: tuple | None = None

    @classmethod
    def from_config(cls, options: dict | None = None) -> CellsOptions:
        """The section's values over the schema's defaults."""
        values = {**schema_defaults("cells"), **(options or {})}
        vectors = values.get("stain_vectors")
        if vectors is not None:
            try:
                stains.stain_matrix(vectors)
            except ValueError as exc:
                raise ConfigError(f"config field 'cells.stain_vectors': {exc}") from exc
            values["stain_vectors"] = tuple(tuple(float(v) for v in row) for row in vectors)
        values["workers"] = max(1, int(values["workers"]))
        return cls(**values)

    @property
    def matrix(self) -> np.ndarray:
        """The (3, 3) unit stain matrix the intensities are unmixed with."""
        return stains.stain_matrix(self.stain_vectors)


@dataclass(frozen=True)
class Context:
    """What a worker needs to measure a batch (small; sent with every batch)."""

    slide_path: str
    sample: str | None
    slide_mpp: float
    mpp: float
    scale: float
    shape: tuple[int, int]  # (H, W) at model resolution
    block: int
    matrix: tuple


@dataclass
class Stats:
    """What a run measured and how long its parts took."""

    cells: int = 0
    batches: int = 0
    blocks: int = 0
    edges: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


_SLIDES: dict = {}


def _slide(ctx: Context):
    """The slide, opened once per process (never inherited across fork)."""
    from histoflow.slide import open_slide

    key = (ctx.slide_path, ctx.slide_mpp)
    if key not in _SLIDES:
        _SLIDES.clear()
        _SLIDES[key] = open_slide(ctx.slide_path, sample=ctx.sample, mpp=ctx.slide_mpp)
    return _SLIDES[key]


class BlockCache:
    """Blocks of the slide at model resolution, read once each at fixed positions.

    `read(x0, y0, w, h)` reads a region at model resolution (default: the slide). Rows
    of blocks above the batch being measured are dropped (batches come in corner
    order), and the oldest blocks once more than `max_blocks` (default: CACHE_BYTES)
    are held.
    """

    def __init__(self, ctx: Context, read=None, max_blocks: int | None = None):
        if read is None:
            slide = _slide(ctx)

            def read(x0, y0, w, h):
                return slide.read_region(x0, y0, w, h, ctx.mpp)

        if max_blocks is None:
            side = ctx.block + 2 * READ_FRAME
            max_blocks = max(16, CACHE_BYTES // (side * side * 3))
        self.ctx, self.read_region, self.max_blocks = ctx, read, max_blocks
        self.blocks: dict[tuple[int, int], np.ndarray] = {}
        self.reads = 0

    def get(self, by: int, bx: int) -> np.ndarray:
        """Block (by, bx) with its frame: (b + 2 f, b + 2 f, 3) uint8."""
        key = (by, bx)
        if key not in self.blocks:
            b, f = self.ctx.block, READ_FRAME
            while len(self.blocks) >= self.max_blocks:
                self.blocks.pop(next(iter(self.blocks)))
            self.blocks[key] = self.read_region(bx * b - f, by * b - f, b + 2 * f, b + 2 * f)
            self.reads += 1
        return self.blocks[key]

    def drop_rows_above(self, by: int) -> None:
        """Forget the blocks of rows above `by`."""
        for key in [k for k in self.blocks if k[0] < by]:
            del self.blocks[key]


def read_colours(cache: BlockCache, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """RGB (p, 3) of model pixels (y, x), from the cache's blocks."""
    b, f = cache.ctx.block, READ_FRAME
    by, bx = y // b, x // b
    rgb = np.empty((len(y), 3), np.uint8)
    if len(y) == 0:
        return rgb
    cache.drop_rows_above(int(by.min()))
    key = by * (cache.ctx.shape[1] // b + 1) + bx
    order = np.argsort(key, kind="stable")
    _, starts = np.unique(key[order], return_index=True)
    ends = np.r_[starts[1:], len(order)]
    for s, e in zip(starts, ends):
        sel = order[s:e]
        row, col = int(by[sel[0]]), int(bx[sel[0]])
        block = cache.get(row, col)
        rgb[sel] = block[y[sel] - row * b + f, x[sel] - col * b + f]
    return rgb


def measure_batch(ctx: Context, contours, cache: BlockCache | None = None) -> dict[str, np.ndarray]:
    """MEASUREMENT_COLUMNS of the objects whose contours (level-0 WKB) are given."""
    cache = cache or BlockCache(ctx)
    polys = shapely.transform(shapely.from_wkb(np.asarray(contours, dtype=object)), _scaler(ctx))
    pixels = rasterise(polys)
    h, w = ctx.shape
    inside = (pixels.y >= 0) & (pixels.y < h) & (pixels.x >= 0) & (pixels.x < w)
    if not inside.all():
        pixels = pixels.take(inside)
    out = shape_measurements(pixels, polys, ctx.mpp)
    rgb = read_colours(cache, pixels.y, pixels.x)
    out |= intensity_measurements(pixels, rgb, np.asarray(ctx.matrix))
    return {k: out[k].astype(np.float32) for k in MEASUREMENT_COLUMNS}


def measure_chunk(
    ctx: Context, table_path: str, start: int, keep: np.ndarray, batch_rows: int
) -> tuple[dict[str, np.ndarray], int, int]:
    """Measurements of the nuclei rows (`keep`) of table rows start..start+len(keep),
    batch by batch with one block cache; also batches and blocks read. Runs in a worker."""
    cache = BlockCache(ctx)
    parts, pending, row = [], [], start

    def flush(contours):
        parts.append(measure_batch(ctx, contours, cache))

    for piece in iter_rows(table_path, start, start + len(keep), ["contour"], batch_rows):
        n = len(piece["contour"])
        pending.extend(piece["contour"][keep[row - start : row - start + n]].tolist())
        row += n
        while len(pending) >= batch_rows:
            flush(pending[:batch_rows])
            pending = pending[batch_rows:]
    if pending:
        flush(pending)
    if not parts:
        return {k: np.empty(0, np.float32) for k in MEASUREMENT_COLUMNS}, 0, 0
    out = {k: np.concatenate([p[k] for p in parts]) for k in MEASUREMENT_COLUMNS}
    return out, len(parts), cache.reads


def _scaler(ctx: Context):
    inverse = 1.0 / ctx.scale

    def to_model(coords):
        return coords * inverse

    return to_model


def instance_tasks(meta: dict) -> list[str]:
    """The tasks whose objects are nuclei (not semantic regions), in declared order."""
    methods = meta.get("methods") or {}
    return [t for t in meta["tasks"] if methods.get(t) != "semantic"]


def neighbour_classes(meta: dict, tasks: list[str]) -> list[str]:
    """Class names of the instance tasks, in declared order, each once."""
    names: list[str] = []
    for task in tasks:
        names += [c["name"] for c in meta["tasks"][task] if c["name"] not in names]
    return names


def _centroids(table: InstanceTable, tasks: list[str]):
    """Task, class name and centroid (level-0 px) of every nucleus row, and the mask of
    the table's rows that are nuclei."""
    cols = table.read(columns=["task", "class_name", "centroid_x", "centroid_y"])
    task = np.asarray(cols["task"].to_numpy(zero_copy_only=False), dtype=object)
    keep = np.isin(task, np.asarray(tasks, dtype=object)) if len(task) else np.zeros(0, bool)
    names = np.asarray(cols["class_name"].to_numpy(zero_copy_only=False), dtype=object)[keep]
    xy = np.stack(
        [cols["centroid_x"].to_numpy()[keep], cols["centroid_y"].to_numpy()[keep]], axis=1
    ).astype(np.float64)
    return task[keep], names, xy, keep


def neighbourhood(table: InstanceTable, tasks: list[str], classes: list[str], options, stats):
    """Neighbour counts (n, C), graph edges and degree of the nuclei rows."""
    task, names, xy, keep = _centroids(table, tasks)
    points = xy * table.slide_mpp
    extra = sorted(set(names.tolist()) - set(classes))
    classes = classes + extra  # undeclared names (not from extract_instances)
    code = {name: i for i, name in enumerate(classes)}
    class_codes = np.array([code[n] for n in names], np.int64)
    task_codes = np.unique(task, return_inverse=True)[1] if len(task) else np.zeros(0, np.int64)
    t0 = time.perf_counter()
    counts = graph.neighbour_counts(
        points, task_codes, class_codes, len(classes), options.neighbour_radius_um, options.workers
    )
    t1 = time.perf_counter()
    edges = graph.graph_edges(points, task_codes, options.graph_max_edge_um)
    stats.seconds["neighbours"] = t1 - t0
    stats.seconds["graph"] = time.perf_counter() - t1
    stats.edges = len(edges[0])
    return counts, classes, edges, graph.degree(edges[0], edges[1], len(points)), keep


def _executor(workers: int) -> Executor | None:
    if workers <= 1:
        return None
    # fork: scripts run as __main__ from a temporary file, which spawn would re-run.
    ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    ex.submit(int, 0).result()  # start the workers before pyarrow starts its threads
    return ex


def chunks(keep: np.ndarray, batch_rows: int, workers: int) -> list[tuple[int, int]]:
    """Contiguous table row ranges, each with about CHUNK_BATCHES batches of nuclei
    (fewer, smaller ones when that leaves workers idle)."""
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        return []
    per_chunk = batch_rows * CHUNK_BATCHES
    count = max(math.ceil(len(rows) / per_chunk), min(workers, math.ceil(len(rows) / batch_rows)))
    cuts = [rows[(len(rows) * i) // count] for i in range(count)] + [len(keep)]
    return [(int(a), int(b)) for a, b in itertools.pairwise(cuts) if b > a]


def _measured(ctx: Context, table_path, keep, options, executor: Executor | None):
    """(start, stop, measurements, batches, blocks) per chunk in order, at most
    2 x workers chunks in flight."""
    jobs = chunks(keep, options.batch_rows, options.workers)
    if executor is None:
        for a, b in jobs:
            yield a, b, *measure_chunk(ctx, str(table_path), a, keep[a:b], options.batch_rows)
        return
    pending: deque = deque()
    for a, b in jobs:
        future = executor.submit(
            measure_chunk, ctx, str(table_path), a, keep[a:b], options.batch_rows
        )
        pending.append((a, b, future))
        if len(pending) >= 2 * options.workers:
            a0, b0, done = pending.popleft()
            yield a0, b0, *done.result()
    while pending:
        a0, b0, done = pending.popleft()
        yield a0, b0, *done.result()


def table_meta(meta: dict, tasks: list[str], classes: list[str], options, ctx) -> dict:
    """The `histoflow` metadata of cells.parquet (and, with `graph`, graph.parquet)."""
    return {
        "sample": ctx.sample or meta.get("sample"),
        "model": meta.get("model"),
        "mpp": ctx.mpp,
        "slide_mpp": ctx.slide_mpp,
        "scale": ctx.scale,
        "shape": list(ctx.shape),
        "tasks": {t: meta["tasks"][t] for t in tasks},
        "neighbour_radius_um": options.neighbour_radius_um,
        "neighbour_classes": classes,
        "graph": "delaunay",
        "graph_max_edge_um": options.graph_max_edge_um,
        "stain_matrix": np.asarray(ctx.matrix).round(6).tolist(),
        "optical_density": "-log10(max(I, 1) / 255) per RGB channel, unmixed by stain_matrix",
        "read_block": ctx.block,
        "units": UNITS,
    }


def _context(table: InstanceTable, slide_path, sample, options: CellsOptions) -> Context:
    meta = table.meta
    mpp, slide_mpp = float(meta["mpp"]), float(meta["slide_mpp"])
    scale = float(meta.get("scale") or mpp / slide_mpp)
    shape = meta.get("shape")
    if not shape:  # older tables: the slide's size at model resolution
        from histoflow.slide import open_slide

        with open_slide(slide_path, sample=sample, mpp=slide_mpp) as slide:
            w, h = slide.size_at(mpp)
        shape = (h, w)
    matrix = tuple(map(tuple, options.matrix.tolist()))
    return Context(
        str(slide_path), sample, slide_mpp, mpp, scale, tuple(map(int, shape)),
        int(options.read_block), matrix,
    )  # fmt: skip


def run(
    instances_path: str | Path,
    slide_path: str | Path,
    cells_path: str | Path,
    graph_path: str | Path,
    options: CellsOptions | None = None,
    sample: str | None = None,
) -> Stats:
    """The stage: measure every nucleus, count neighbours, write both tables atomically."""
    options = options or CellsOptions.from_config()
    t_start = time.perf_counter()
    stats = Stats()
    executor = _executor(options.workers)
    try:
        table = open_instance_table(instances_path)
        ctx = _context(table, slide_path, sample, options)
        tasks = instance_tasks(table.meta)
        declared = neighbour_classes(table.meta, tasks)
        counts, classes, edges, deg, keep = neighbourhood(table, tasks, declared, options, stats)
        meta = table_meta(table.meta, tasks, classes, options, ctx)
        write_graph(graph_path, *edges, meta)
        del edges
        # The triangulation's and the table columns' freed pages stay in glibc's heap
        # while the workers measure; without them the parent holds its O(nuclei) arrays.
        release_heap()
        t_measure = time.perf_counter()
        with atomic_output(cells_path) as tmp, CellTableWriter(tmp, classes, meta) as writer:
            row = 0
            for a, b, values, batches, blocks in _measured(
                ctx, table.path, keep, options, executor
            ):
                sel = keep[a:b]
                columns = {k: v[sel] for k, v in read_rows(table.path, a, b, IDENTITY).items()}
                n = len(columns["id"])
                part = counts[row : row + n]
                columns["centroid_x_um"] = columns["centroid_x"] * ctx.slide_mpp
                columns["centroid_y_um"] = columns["centroid_y"] * ctx.slide_mpp
                columns |= values
                columns[NEIGHBOURS_TOTAL] = part.sum(axis=1)
                columns |= {neighbour_column(c): part[:, i] for i, c in enumerate(classes)}
                columns[DEGREE] = deg[row : row + n]
                writer.write(columns)
                row += n
                stats.batches += batches
                stats.blocks += blocks
            stats.cells = writer.rows
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    now = time.perf_counter()
    stats.seconds["measure"] = now - t_measure
    stats.seconds["total"] = now - t_start
    log.info(
        "%s: %d cells measured in %.1f s (%.0f cells/s; %d batches, %d blocks read); "
        "%d Delaunay edges; neighbours within %g µm",
        cells_path,
        stats.cells,
        stats.seconds["total"],
        stats.cells / max(stats.seconds["total"], 1e-9),
        stats.batches,
        stats.blocks,
        stats.edges,
        options.neighbour_radius_um,
    )
    return stats

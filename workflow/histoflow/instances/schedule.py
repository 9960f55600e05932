"""Which tiles, in what order, on which workers.

The main process reads each tile's window from maps.zarr (only the chunks it overlaps,
maps.zarr's chunks being at most CHUNK_COLUMNS wide) and hands it to the workers, with
at most two windows per worker in flight, so memory follows the tile size, not the
slide's height or width. Results come back in tile order, so the output does not
depend on the worker count.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

from histoflow.errors import ConfigError
from histoflow.instances import tiling
from histoflow.instances.options import InstancesOptions
from histoflow.instances.tasks import Task
from histoflow.instances.work import TileResult, process_tile
from histoflow.io.maps_zarr import COVERAGE, MapsZarr


@dataclass(frozen=True)
class TilePlan:
    """The tile grid of one run: core shape, margin (model pixels) and tiles."""

    tile_shape: tuple[int, int]
    margin: int
    tiles: list[tiling.Tile]


def _check_margin(margin: int, tile_shape: tuple[int, int], need: int, tiled: bool) -> None:
    if margin >= min(tile_shape):
        raise ConfigError(
            f"config field 'instances.margin': {margin} px is not smaller than the tile "
            f"{list(tile_shape)} (instances.tile_shape); each tile would read more "
            "context than it owns: lower the margin or raise the tile shape"
        )
    if margin <= need and tiled:
        raise ConfigError(
            f"config field 'instances.margin': {margin} px is too small; the "
            f"post-processing reaches {need} px, so use at least {need + 1} "
            "(and more than the largest object, in model pixels)"
        )


def plan_tiles(maps: MapsZarr, tasks: list[Task], options: InstancesOptions) -> TilePlan:
    """The grid for `options`, checked against the tasks' reach; one tile if untiled."""
    H, W = maps.shape
    options = options.for_card(maps.attrs["model"])
    if options.tile_shape is None:
        tile_shape, margin = (H, W), 0
    else:
        tile_shape = tiling.round_tile_shape(options.tile_shape, maps.attrs.get("patch_output"))
        margin = int(options.margin)
        need = max((t.halo for t in tasks if t.kind == "instances"), default=1)
        _check_margin(margin, tile_shape, need, tile_shape[0] < H or tile_shape[1] < W)
    tile_shape = tuple(tile_shape)
    return TilePlan(tile_shape, margin, tiling.tile_grid(maps.shape, tile_shape, margin))


def strips(tiles: list[tiling.Tile]) -> list[list[tiling.Tile]]:
    """The tiles grouped by grid row, rows in order."""
    rows: dict[int, list[tiling.Tile]] = {}
    for t in tiles:
        rows.setdefault(t.row, []).append(t)
    return [rows[r] for r in sorted(rows)]


def make_executor(options: InstancesOptions) -> Executor | None:
    """A started pool of `options.workers`, or None to work in this process."""
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


def read_names(tasks: list[Task]) -> list[str]:
    """The maps.zarr arrays the tasks read: their heads, and coverage for regions."""
    names = sorted({h for t in tasks for h in t.heads.values()})
    return names + (["coverage"] if any(t.kind == "regions" for t in tasks) else [])


def ordered_map(executor: Executor | None, fn: Callable, jobs: Iterable[tuple | None]) -> Iterator:
    """fn(*job) for each job, in order, on the executor's workers with at most two jobs
    per worker in flight (a job is built only when it is handed out); a None job gives
    None without a call."""
    if executor is None:
        for job in jobs:
            yield None if job is None else fn(*job)
        return
    ahead = 2 * max(1, getattr(executor, "_max_workers", 1))
    pending: deque[Future] = deque()
    for job in jobs:
        if job is None:
            done: Future = Future()
            done.set_result(None)
            pending.append(done)
        else:
            pending.append(executor.submit(fn, *job))
        del job
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def ordered_tiles(tiles: list[tiling.Tile]) -> list[tiling.Tile]:
    """The tiles strip by strip, each strip left to right: the order results come in."""
    return [t for strip in strips(tiles) for t in strip]


def has_patches(maps: MapsZarr, window: tuple[int, int, int, int]) -> bool:
    """Whether any patch covered the window (coverage > 0); outside every patch the
    maps are 0 and hold no object."""
    return bool(maps.read_window([COVERAGE], window)[COVERAGE].any())


def tiles_with_patches(maps: MapsZarr, tiles: list[tiling.Tile]) -> frozenset[int]:
    """Indices of the tiles whose window some patch covered, found once per run; the
    other tiles are glass (maps 0 throughout their window)."""
    return frozenset(t.index for t in tiles if has_patches(maps, t.window))


def run_tiles(
    maps: MapsZarr,
    tiles: list[tiling.Tile],
    tasks: list[Task],
    executor: Executor | None,
    covered: frozenset[int],
) -> Iterator[TileResult]:
    """Results in tile order, each tile's window read just before it is handed out.

    With instance tasks only, a tile not in `covered` (`tiles_with_patches`: glass) is
    not read or post-processed: its result is empty, as it would be.
    """
    names = read_names(tasks)
    skip_glass = all(t.kind != "regions" for t in tasks)
    ordered = ordered_tiles(tiles)

    def job(t: tiling.Tile):
        if skip_glass and t.index not in covered:
            return None
        return (t, maps.read_window(names, t.window), tasks, maps.shape, maps.scale)

    results = ordered_map(executor, process_tile, (job(t) for t in ordered))
    for t, res in zip(ordered, results, strict=True):
        yield TileResult(t.index) if res is None else res


def progress(total: int):
    """A tqdm bar on stderr (the rule's log), or a null context without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc="tiles", unit="tile", mininterval=5.0, file=sys.stderr)

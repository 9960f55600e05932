"""extract_instances as one call: maps.zarr -> instance table (+ class map).

`extract` plans the tile grid, runs the tiles (`schedule`, `work`) and assembles each
task's objects (`assemble`); `run` then writes the table through
`histoflow.io.instance_table`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from histoflow.instances.assemble import Assembly, create_classmap
from histoflow.instances.normalise import with_hover_stats
from histoflow.instances.options import InstancesOptions
from histoflow.instances.schedule import (
    TilePlan,
    make_executor,
    plan_tiles,
    progress,
    run_tiles,
    tiles_with_patches,
)
from histoflow.instances.tasks import Task, tasks_from_card
from histoflow.io.atomic import atomic_output
from histoflow.io.instance_table import Objects, build_table, write_instance_table
from histoflow.io.maps_zarr import MapsZarr, open_maps

log = logging.getLogger("histoflow.instances")

PerTask = list[tuple[str, list[dict], Objects]]


@dataclass
class Stats:
    """What a run found and how long its parts took."""

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


def slide_attrs(maps: MapsZarr) -> dict:
    """Resolution and sample of the maps, as the class map and the table record them."""
    return {
        "mpp": maps.mpp,
        "scale": maps.scale,
        "slide_mpp": maps.slide_mpp,
        "sample": maps.attrs.get("sample"),
    }


def table_meta(maps: MapsZarr, tasks: list[Task], plan: TilePlan) -> dict:
    """The instance table's `histoflow` metadata."""
    return {
        **slide_attrs(maps),
        "model": maps.attrs["model"].get("name"),
        "shape": list(maps.shape),
        "tile_shape": list(plan.tile_shape),
        "margin": plan.margin,
        "tasks": {t.name: t.classes for t in tasks},
        "methods": {t.name: t.method for t in tasks},
    }


def _log_plan(maps: MapsZarr, tasks: list[Task], plan: TilePlan, workers: int) -> None:
    log.info(
        "%s: %dx%d px at %.3g mpp, %d tasks (%s), %d tiles of %dx%d + margin %d, %d worker(s)",
        maps.path,
        maps.shape[1],
        maps.shape[0],
        maps.mpp,
        len(tasks),
        ", ".join(f"{t.name}:{t.method}" for t in tasks),
        len(plan.tiles),
        plan.tile_shape[1],
        plan.tile_shape[0],
        plan.margin,
        workers,
    )


def _log_losses(stats: Stats, margin: int) -> None:
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


def _open_classmap(stack, path, maps: MapsZarr, tasks: list[Task], plan: TilePlan):
    """The class map of the first semantic task, written atomically; None without one."""
    semantic = [t for t in tasks if t.kind == "regions"]
    if not semantic or path is None:
        return None
    tmp = stack.enter_context(atomic_output(path))
    return create_classmap(tmp, maps.shape, plan.tile_shape, semantic[0], slide_attrs(maps))


def _assemble(
    maps, tasks, plan, executor, classmap_path, covered
) -> tuple[PerTask, Assembly, float]:
    """Run the tiles into an Assembly, then finish each task; also the time tiles ended."""
    with contextlib.ExitStack() as stack:
        asm = Assembly(tasks, plan, _open_classmap(stack, classmap_path, maps, tasks, plan))
        bar = stack.enter_context(progress(len(plan.tiles)))
        for res in run_tiles(maps, plan.tiles, tasks, executor, covered):
            asm.add(res)
            if bar is not None:
                bar.update(1)
        t_tiles = time.perf_counter()
        per_task = [(t.name, t.classes, asm.finish(t, maps.scale)) for t in tasks]
    return per_task, asm, t_tiles


def extract(
    maps_path: str | Path,
    options: InstancesOptions | None = None,
    classmap_path: str | Path | None = None,
) -> tuple[PerTask, dict, Stats]:
    """Post-process maps.zarr tile by tile.

    Returns (task, classes, objects) in card order, the table metadata and stats. With
    a semantic task and `classmap_path`, the class map is written there atomically.
    """
    options = options or InstancesOptions.from_config()
    t_start = time.perf_counter()
    executor = make_executor(options)
    try:
        maps = open_maps(maps_path)
        tasks = tasks_from_card(maps.attrs["model"], maps.channels, maps.mpp)
        plan = plan_tiles(maps, tasks, options)
        covered = tiles_with_patches(maps, plan.tiles)
        tasks = with_hover_stats(maps, tasks, plan, covered, executor)
        _log_plan(maps, tasks, plan, options.workers)
        per_task, asm, t_tiles = _assemble(maps, tasks, plan, executor, classmap_path, covered)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    stats = Stats(
        tiles=len(plan.tiles),
        tile_shape=plan.tile_shape,
        objects={name: len(objs) for name, _, objs in per_task},
        truncated=asm.truncated,
        conflicts=asm.conflicts,
        seconds={
            "tiles": t_tiles - t_start,
            "dedup": asm.dedup_s,
            "ownership_cpu": asm.ownership_s,
            "workers": options.workers,
            "total": time.perf_counter() - t_start,
        },
    )
    _log_losses(stats, plan.margin)
    return per_task, table_meta(maps, tasks, plan), stats


def run(
    maps_path: str | Path,
    table_path: str | Path,
    classmap_path: str | Path | None = None,
    options: InstancesOptions | None = None,
) -> Stats:
    """The stage: extract, then write the table atomically."""
    per_task, meta, stats = extract(maps_path, options, classmap_path)
    t0 = time.perf_counter()
    write_instance_table(build_table(per_task), table_path, meta)
    stats.seconds["write"] = time.perf_counter() - t0
    log.info(
        "wrote %s: %s in %.1f s (de-dup %.1f%% of the stage)",
        table_path,
        ", ".join(f"{k}: {v} objects" for k, v in stats.objects.items()),
        stats.seconds["total"],
        100 * stats.dedup_share,
    )
    return stats

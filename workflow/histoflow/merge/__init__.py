"""merge_patches: raw per-patch outputs -> slide-scale maps, one band of rows at a time.

Modules, one concern each: `options` (the config section), `canvas` (band
accumulators: sum per head + coverage count, in memory or on disk), `memory` (the
spill policy: psutil threshold, optional absolute cap), `stitch` (the row-band merge),
`stage` (`run`: raw.zarr in, maps.zarr out), `heatmap` (the report picture) and
`resources` (threads and mem_mb for the rule). The stores themselves are
`histoflow.io.raw_zarr` and `histoflow.io.maps_zarr`.
"""

__all__ = ["MergeOptions", "MergeStats", "run"]

_HOMES = {
    "MergeOptions": "histoflow.merge.options",
    "MergeStats": "histoflow.merge.stitch",
    "run": "histoflow.merge.stage",
}


def __getattr__(name):
    # Lazy, so that the rule files can import `resources` without the merge machinery.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(name)

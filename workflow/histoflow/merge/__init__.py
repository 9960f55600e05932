"""merge_patches: raw per-patch outputs -> slide-scale maps, one band of rows at a time.

Modules, one concern each: `options` (the config section), `canvas` (band
accumulators: sum per head + coverage count, in memory or on disk), `memory` (the
spill policy: psutil threshold, optional absolute cap), `stitch` (the row-band merge),
`stage` (`run`: raw.zarr in, maps.zarr out), `heatmap` (the report picture) and
`resources` (threads and mem_mb for the rule). The stores themselves are
`histoflow.io.raw_zarr` and `histoflow.io.maps_zarr`.
"""

from histoflow.merge.options import MergeOptions
from histoflow.merge.stage import run
from histoflow.merge.stitch import MergeStats

__all__ = ["MergeOptions", "MergeStats", "run"]

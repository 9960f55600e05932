"""merge_patches engine: raw per-patch outputs -> slide-scale maps, one band of rows at a time.

Modules, one concern each:

- `raw`: reading and validating `infer/raw.zarr` (boxes, grid, heads, attributes)
- `canvas`: band accumulators (sum per head + coverage count) in memory or on disk
- `memory`: the spill policy (psutil threshold, optional absolute cap)
- `writer`: `merge/maps.zarr`, written one chunk of whole rows at a time
- `stitch`: the row-band merge that ties them together (`merge_patches`)
- `resources`: threads and mem_mb for the rule, from the raw store's attributes
- `synthetic`: a raw.zarr generator for tests and benchmarks

Nothing is imported here, so the Snakefile can import `resources` without zarr.
"""

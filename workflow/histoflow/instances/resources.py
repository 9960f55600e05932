"""Resource estimates for the extract_instances rule (light: imported when Snakemake
parses the workflow)."""

from __future__ import annotations

from pathlib import Path

# Bytes per window pixel of post-processing intermediates in one worker.
WORKER_BYTES_PER_PX = 45
# Before maps.zarr exists (dry runs) the slide is taken as this many tiles wide.
DRY_RUN_TILES_WIDE = 4


def estimate_mem_mb(maps_path: str | Path, cfg: dict, workers: int) -> int:
    """Peak RSS (MB) of the stage, for the rule's mem_mb: the main process holds one
    strip of windows (full width) and the results, each worker one window and its
    intermediates. `cfg` is the validated `instances` section (defaults filled in).
    A maps.zarr that exists but cannot be read is an error naming the file."""
    # Imported here: the Snakefile imports this module at parse time, and the store's
    # reader pulls in zarr.
    from histoflow.instances.options import InstancesOptions
    from histoflow.io.maps_zarr import read_maps_attrs

    attrs = read_maps_attrs(maps_path)
    opts = InstancesOptions.from_config(cfg).for_card({} if attrs is None else attrs["model"])
    th, tw = opts.tile_shape
    m = opts.margin
    if attrs is None:
        width, channels = DRY_RUN_TILES_WIDE * tw, 2
    else:
        width = int(attrs["shape"][1])
        channels = sum(int(h["channels"]) for h in attrs["heads"])
    strip_mb = width * (th + 2 * m) * (4 * channels + 2) / 1e6
    window_mb = (th + 2 * m) * (tw + 2 * m) * WORKER_BYTES_PER_PX / 1e6
    return int(600 + strip_mb + max(1, workers) * (170 + window_mb))

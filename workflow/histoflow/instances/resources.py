"""Resource estimates for the extract_instances rule (light: imported when Snakemake
parses the workflow)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_TILE = (2048, 2048)
DEFAULT_MARGIN = 64


def estimate_mem_mb(maps_path: str | Path, cfg: dict, workers: int) -> int:
    """Peak RSS (MB) of the stage, for the rule's mem_mb: the main process holds one
    strip of windows (full width) and the results, each worker one window and about
    45 bytes per window pixel of intermediates (benchmarks/bench_instances.py). Before
    maps.zarr exists (dry runs) the slide is taken as four tiles wide."""
    th, tw = (int(v) for v in cfg.get("tile_shape", DEFAULT_TILE))
    m = int(cfg.get("margin", DEFAULT_MARGIN))
    width, channels = 4 * tw, 2
    try:
        import zarr

        attrs = dict(zarr.open_group(maps_path, mode="r").attrs)
        width = int(attrs["shape"][1])
        channels = sum(int(h["channels"]) for h in attrs["heads"])
    except Exception:  # not written yet: estimate from the tiles alone
        pass
    strip_mb = width * (th + 2 * m) * (4 * channels + 2) / 1e6
    window_mb = (th + 2 * m) * (tw + 2 * m) * 45 / 1e6
    return int(600 + strip_mb + max(1, workers) * (170 + window_mb))

"""merge_patches as one call: raw.zarr -> maps.zarr, written atomically."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import zarr
from tqdm import tqdm

from histoflow.inference.grid import covered_pixels
from histoflow.io.atomic import atomic_output
from histoflow.io.maps_zarr import (
    MapsZarrWriter,
    blosc_threads,
    bytes_per_pixel,
    chunk_columns,
    store_encodings,
)
from histoflow.io.raw_zarr import BatchReader, RawZarr, open_raw
from histoflow.io.space import require_free_space
from histoflow.merge.memory import MB, MemoryPolicy, SpillCache
from histoflow.merge.options import MergeOptions
from histoflow.merge.resources import window_columns
from histoflow.merge.stitch import (
    Merger,
    MergeStats,
    check_coverage_fits,
    column_windows,
    default_band_rows,
    max_overlap,
)

log = logging.getLogger(__name__)


def _log_start(raw: RawZarr, band_rows: int, policy: MemoryPolicy) -> None:
    height, width = raw.shape
    log.info(
        "merging %d patches in %d grid rows into %dx%d (H x W) maps, heads %s; band_rows %d; "
        "memory %s",
        len(raw),
        len(raw.rows),
        height,
        width,
        ", ".join(f"{n}[{c}]" for n, c in raw.channels.items()),
        band_rows,
        policy.describe(),
    )
    if not len(raw):
        log.warning(
            "no patches in %s (no tissue?): maps are 0 with coverage 0 everywhere", raw.path
        )


def _log_end(stats: MergeStats) -> None:
    log.info(
        "merged %d patches in %.1f s: %d bands (%d spilled), largest band %.1f MB and %d px "
        "wide, %d output chunks written",
        stats.patches,
        stats.seconds,
        stats.bands,
        stats.spilled_bands,
        stats.max_canvas_bytes / MB,
        stats.max_canvas_width,
        stats.chunks_written,
    )


# A second set of output-chunk buffers lets the last chunk encode while the next one is
# accumulated; above this size (a wide slide with many channels: 473 MB per set for
# HoVer-Net's 10 channels 65536 px wide) one set is used, so memory stays in bound.
DOUBLE_BUFFER_MAX_BYTES = 256 * MB


def writer_buffer_bytes(raw: RawZarr, band_rows: int, width: int | None = None) -> int:
    """Bytes of one set of the writer's float32 chunk buffers (heads and coverage) over
    `width` columns (the slide's by default)."""
    width = raw.shape[1] if width is None else width
    return band_rows * width * (sum(raw.channels.values()) + 1) * 4


def merge_windows(raw: RawZarr, options: MergeOptions, band_rows: int, threads: int):
    """Column windows of the merge (whole chunks) and whether the writer double-buffers."""
    width = raw.shape[1]
    sets = 2 if threads >= 2 else 1
    cols = options.window_cols or window_columns(raw.attrs, band_rows, sets)
    windows = column_windows(width, chunk_columns(width), cols)
    widest = max(x1 - x0 for x0, x1 in windows)
    double = sets == 2 and writer_buffer_bytes(raw, band_rows, widest) <= DOUBLE_BUFFER_MAX_BYTES
    return windows, double


def _progress_bar(raw: RawZarr, progress: bool):
    boxes = raw.clipped_boxes()
    valid = (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
    return tqdm(
        total=int(valid.sum()),
        unit="patch",
        desc="merge",
        file=sys.stderr,
        disable=not progress,
        mininterval=5.0,
        ascii=True,
    )


def _merge_into(
    tmp: Path, raw: RawZarr, options: MergeOptions, stats, policy, cache, threads, progress
):
    windows, double = merge_windows(raw, options, stats.band_rows, threads)
    stats.windows = len(windows)
    writer = MapsZarrWriter(
        tmp,
        raw.shape,
        raw.channels,
        stats.band_rows,
        # `patches`: so the count survives a temporary raw.zarr (config keep).
        {**raw.attrs, "band_rows": stats.band_rows, "patches": len(raw)},
        compression=options.compression,
        background=double,
        encodings=maps_encodings(raw, options.encoding),
    )
    bar = _progress_bar(raw, progress)
    try:
        for window in windows:
            writer.set_columns(*window)
            merger = Merger(raw, writer, policy, cache, options, stats, window)
            # With 2+ threads, decoding the next raw batch and encoding the last output
            # chunk overlap with the accumulation.
            reader = BatchReader(raw, options.read_batch, threads >= 2, merger.rows)
            try:
                merger.run(reader, bar)
            finally:
                reader.close()
        writer.close()
    finally:
        bar.close()
        writer.abort()
    stats.chunks_written = writer.chunks_written


def maps_encodings(raw, encoding: str) -> dict[str, dict]:
    """Stored type of each head and of coverage for this grid (histoflow.io.maps_zarr)."""
    return store_encodings(raw.attrs["heads"], encoding, max_overlap(raw))


def maps_nbytes(raw, encoding: str = "compact") -> int:
    """Uncompressed bytes of the covered part of maps.zarr in its stored types, over at
    most the patches' area (chunks outside every patch are not stored)."""
    covered = covered_pixels(raw.boxes, raw.shape)
    return covered * bytes_per_pixel(maps_encodings(raw, encoding), raw.channels)


def run(
    raw_path: str | Path,
    out_path: str | Path,
    options: MergeOptions | None = None,
    *,
    threads: int = 1,
    tmpdir: str | None = None,
    progress: bool = False,
) -> MergeStats:
    """Merge raw.zarr at `raw_path` into maps.zarr at `out_path` (written atomically).

    `tmpdir` is where the spill cache goes (the job's temporary directory); it is
    removed at the end, whether the merge succeeds or fails.
    """
    options = options or MergeOptions.from_config()
    started = time.perf_counter()
    raw = open_raw(raw_path)
    check_coverage_fits(raw)
    stats = MergeStats(band_rows=options.band_rows or default_band_rows(raw.attrs, raw.patch_shape))
    policy = MemoryPolicy(options.memory_percent, options.memory_cap_mb)
    cache = SpillCache(tmpdir, raw.attrs.get("sample"))
    require_free_space(
        out_path,
        maps_nbytes(raw, options.encoding),
        sample=raw.attrs.get("sample"),
        what="maps.zarr",
        compressed=options.compression != "none",
    )
    _log_start(raw, stats.band_rows, policy)
    try:
        with (
            zarr.config.set({"threading.max_workers": max(1, int(threads))}),
            blosc_threads(int(threads)),
            atomic_output(out_path) as tmp,
        ):
            _merge_into(tmp, raw, options, stats, policy, cache, threads, progress)
    finally:
        cache.cleanup()
    stats.seconds = time.perf_counter() - started
    _log_end(stats)
    return stats

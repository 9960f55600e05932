"""The row-band merge: raw.zarr -> maps.zarr without ever holding a slide-scale array.

Patches arrive row-major. Each grid row is summed into a band canvas only as wide as
that row's span; the live rows of the previous band (the vertical overlap) are folded
into it; rows that no later patch can reach are divided by their counts and written.
Peak memory is two bands plus one output chunk band, whatever the slide height.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from histoflow.errors import ConfigError
from histoflow.io.atomic import atomic_output
from histoflow.merge.canvas import Canvas, MemoryStorage, Region, ZarrStorage, canvas_nbytes
from histoflow.merge.memory import MB, MemoryPolicy, SpillCache
from histoflow.merge.raw import BatchReader, RawPatches, RawStoreError
from histoflow.merge.writer import COMPRESSIONS, COVERAGE, MapWriter, blosc_threads

log = logging.getLogger(__name__)

MAX_COVERAGE = np.iinfo(np.uint16).max


@dataclass(frozen=True)
class MergeOptions:
    """The `merge:` config section (see workflow/schemas/config.schema.yaml)."""

    memory_percent: float = 50.0
    memory_cap_mb: float | None = None
    band_rows: int | None = None
    compression: str = "blosc-lz4"
    read_batch: int = 64
    spill_block_cols: int = 2048

    @classmethod
    def from_config(cls, cfg: dict) -> MergeOptions:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"config field 'merge.{unknown[0]}': unknown key")
        opts = cls(**cfg)
        if opts.compression not in COMPRESSIONS:
            raise ConfigError(
                f"config field 'merge.compression': '{opts.compression}' is not one of "
                f"{', '.join(COMPRESSIONS)}"
            )
        if not 0 <= opts.memory_percent <= 100:
            raise ConfigError("config field 'merge.memory_percent': must be within 0-100")
        if opts.band_rows is not None and opts.band_rows < 1:
            raise ConfigError("config field 'merge.band_rows': must be at least 1")
        return opts


@dataclass
class MergeStats:
    patches: int = 0
    bands: int = 0
    spilled_bands: int = 0
    spill_reason: str = ""
    max_canvas_bytes: int = 0
    max_canvas_width: int = 0
    chunks_written: int = 0
    band_rows: int = 0
    seconds: float = 0.0
    canvases: list[Region] = field(default_factory=list, repr=False)


def default_band_rows(attrs: dict, patch_shape: tuple[int, int]) -> int:
    """Output chunk height: the vertical stride, so one grid row finishes one chunk."""
    stride = attrs.get("stride")
    if stride:
        return max(1, int(stride[0]))
    return max(1, int(patch_shape[0]) or 256)


def check_coverage_fits(raw: RawPatches) -> None:
    stride = raw.attrs.get("stride")
    h, w = raw.patch_shape
    if not stride or not len(raw):
        return
    sy, sx = (int(v) for v in stride)
    if sy <= 0 or sx <= 0:
        raise RawStoreError(f"file '{raw.path}': attribute 'stride' must be positive")
    worst = math.ceil(h / sy) * math.ceil(w / sx)
    if worst > MAX_COVERAGE:
        raise RawStoreError(
            f"file '{raw.path}': up to {worst} patches overlap one pixel (patch {h}x{w}, "
            f"stride {sy}x{sx}); coverage is uint16, at most {MAX_COVERAGE}"
        )


def _row_tops(raw: RawPatches, boxes: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """For each grid row, the first slide row that it or any later grid row touches:
    rows above it are final before that grid row is merged."""
    height = raw.shape[0]
    tops = np.full(len(raw.rows), height, dtype=np.int64)
    for g, row in enumerate(raw.rows):
        ok = valid[row.start : row.stop]
        if ok.any():
            tops[g] = boxes[row.start : row.stop][ok, 1].min()
    return np.minimum.accumulate(tops[::-1])[::-1] if len(tops) else tops


class _Merger:
    def __init__(self, raw, reader, writer, policy, cache, options, stats):
        self.raw = raw
        self.reader = reader
        self.writer = writer
        self.policy = policy
        self.cache = cache
        self.options = options
        self.stats = stats

    def new_canvas(self, region: Region) -> Canvas:
        nbytes = canvas_nbytes(region, self.raw.channels)
        decision = self.policy.decide(nbytes)
        if decision.spill:
            if not self.stats.spill_reason:
                self.stats.spill_reason = decision.reason
                log.warning(
                    "spilling accumulators to disk from slide row %d on: %s",
                    region.y0,
                    decision.reason,
                )
            root = self.cache.new_dir()
            h, w = self.raw.patch_shape

            def factory(shapes):
                return ZarrStorage(
                    shapes, root, chunk_cols=max(64, w), block_cols=self.options.spill_block_cols
                )

            self.stats.spilled_bands += 1
        else:
            factory = MemoryStorage
        self.stats.bands += 1
        self.stats.max_canvas_bytes = max(self.stats.max_canvas_bytes, nbytes)
        self.stats.max_canvas_width = max(self.stats.max_canvas_width, region.width)
        self.stats.canvases.append(region)
        return Canvas(region, self.raw.channels, factory)

    def flush(self, canvas: Canvas, limit: int) -> None:
        """Normalise and write the canvas rows above `limit`."""
        for block, sums, count in canvas.take_rows(limit, align=self.writer.band_rows):
            for part, views in self.writer.segments(block):
                ys = slice(part.y0 - block.y0, part.y1 - block.y0)
                xs = slice(part.x0 - block.x0, part.x1 - block.x0)
                c = count[ys, xs]
                # Uncovered pixels have sum 0, so dividing by max(count, 1) gives 0 there
                # without a masked (slow) divide.
                divisor = np.maximum(c, 1).astype(np.float32)
                for name, s in sums.items():
                    if s.shape[-1] == 1:  # a length-1 broadcast axis makes numpy crawl
                        np.divide(s[ys, xs, 0], divisor, out=views[name][..., 0])
                    else:
                        np.divide(s[ys, xs], divisor[..., None], out=views[name])
                views[COVERAGE][...] = c

    def run(self, progress: bool) -> None:
        raw = self.raw
        boxes = raw.clipped_boxes()
        valid = (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
        limits = _row_tops(raw, boxes, valid)
        bar = tqdm(
            total=len(raw),
            unit="patch",
            desc="merge",
            file=sys.stderr,
            disable=not progress,
            mininterval=5.0,
            ascii=True,
        )
        carry: Canvas | None = None
        try:
            for g, row in enumerate(raw.rows):
                if carry is not None:
                    self.flush(carry, int(limits[g]))
                    if carry.extent().empty:
                        carry.close()
                        carry = None
                keep = np.flatnonzero(valid[row.start : row.stop]) + row.start
                if not len(keep):
                    bar.update(row.stop - row.start)
                    continue
                kb = boxes[keep]
                region = Region(
                    int(kb[:, 1].min()),
                    int(kb[:, 3].max()),
                    int(kb[:, 0].min()),
                    int(kb[:, 2].max()),
                )
                if carry is not None and not region.contains(carry.extent()):
                    region = region.union(carry.extent())
                band = self.new_canvas(region)
                try:
                    self.add_row(band, row, boxes, valid, bar)
                    if carry is not None:
                        band.add_canvas(carry)
                except BaseException:
                    band.close()
                    raise
                if carry is not None:
                    carry.close()
                carry = band
            if carry is not None:
                self.flush(carry, raw.shape[0])
        finally:
            if carry is not None:
                carry.close()
            bar.close()

    def add_row(self, band: Canvas, row, boxes, valid, bar) -> None:
        raw = self.raw
        for start, batch in self.reader.row(row):
            n = len(next(iter(batch.values())))
            for i in range(start, start + n):
                if not valid[i]:
                    continue
                x0, y0, x1, y1 = (int(v) for v in boxes[i])
                bx0, by0 = (int(v) for v in raw.boxes[i, :2])
                ys, xs = slice(y0 - by0, y1 - by0), slice(x0 - bx0, x1 - bx0)
                # float16 -> float32 is exact, so adding the stored dtype (numpy casts
                # on the fly) equals adding a float32 copy, without the copy.
                values = {name: arr[i - start, ys, xs] for name, arr in batch.items()}
                band.add_patch(Region(y0, y1, x0, x1), values)
                self.stats.patches += 1
            bar.update(n)


def merge_patches(
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
    options = options or MergeOptions()
    started = time.perf_counter()
    raw = RawPatches(raw_path)
    check_coverage_fits(raw)
    band_rows = options.band_rows or default_band_rows(raw.attrs, raw.patch_shape)
    stats = MergeStats(band_rows=band_rows)
    policy = MemoryPolicy(options.memory_percent, options.memory_cap_mb)
    cache = SpillCache(tmpdir)
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
            "no patches in %s (no tissue?): maps are 0 with coverage 0 everywhere", raw_path
        )
    attrs = {**raw.attrs, "band_rows": band_rows}
    try:
        with (
            zarr.config.set({"threading.max_workers": max(1, int(threads))}),
            blosc_threads(int(threads)),
            atomic_output(out_path) as tmp,
        ):
            writer = MapWriter(
                tmp,
                raw.shape,
                raw.channels,
                band_rows,
                attrs,
                compression=options.compression,
                background=threads >= 2,
            )
            # With 2+ threads, decoding the next raw batch and encoding the last output
            # chunk overlap with the accumulation.
            reader = BatchReader(raw, options.read_batch, prefetch=threads >= 2)
            try:
                _Merger(raw, reader, writer, policy, cache, options, stats).run(progress)
                writer.close()
            finally:
                reader.close()
                writer.abort()
            stats.chunks_written = writer.chunks_written
    finally:
        cache.cleanup()
    stats.seconds = time.perf_counter() - started
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
    return stats

"""The row-band merge: raw.zarr -> maps.zarr without ever holding a slide-scale array.

Patches arrive row-major. Each grid row is summed into a band canvas only as wide as
that row's span; the live rows of the previous band (the vertical overlap) are folded
into it; rows that no later patch can reach are divided by their counts and written.
Peak memory is two bands plus one output chunk band, whatever the slide height.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from histoflow.inference.grid import max_overlap as grid_max_overlap
from histoflow.io.maps_zarr import COVERAGE, MapsZarrWriter
from histoflow.io.raw_zarr import BatchReader, PatchRow, RawZarr, RawZarrError
from histoflow.merge.canvas import Canvas, MemoryStorage, Region, ZarrStorage, canvas_nbytes
from histoflow.merge.memory import MemoryPolicy, SpillCache
from histoflow.merge.options import MergeOptions

log = logging.getLogger(__name__)

MAX_COVERAGE = np.iinfo(np.uint16).max


@dataclass
class MergeStats:
    """What one merge did: patches, bands (spilled or not), largest band, chunks, time."""

    patches: int = 0
    bands: int = 0
    spilled_bands: int = 0
    spill_reason: str = ""
    max_canvas_bytes: int = 0
    max_canvas_width: int = 0
    chunks_written: int = 0
    band_rows: int = 0
    windows: int = 0
    seconds: float = 0.0
    canvases: list[Region] = field(default_factory=list, repr=False)


def default_band_rows(attrs: dict, patch_shape: tuple[int, int]) -> int:
    """Output chunk height: the vertical stride, so one grid row finishes one chunk."""
    stride = attrs.get("stride")
    if stride:
        return max(1, int(stride[0]))
    return max(1, int(patch_shape[0]) or 256)


def max_overlap(raw: RawZarr) -> int:
    """The most patches of the grid that can cover one pixel (uint16's limit unknown)."""
    stride = raw.attrs.get("stride")
    h, w = raw.patch_shape
    if not len(raw):
        return 0
    if not stride:
        return MAX_COVERAGE
    sy, sx = (int(v) for v in stride)
    if sy <= 0 or sx <= 0:
        raise RawZarrError(f"file '{raw.path}': attribute 'stride' must be positive")
    return grid_max_overlap((h, w), (sy, sx))


def check_coverage_fits(raw: RawZarr) -> None:
    """Refuse a grid whose patches overlap one pixel more often than uint16 counts."""
    worst = max_overlap(raw)
    if worst > MAX_COVERAGE and raw.attrs.get("stride"):
        sy, sx = (int(v) for v in raw.attrs["stride"])
        h, w = raw.patch_shape
        raise RawZarrError(
            f"file '{raw.path}': up to {worst} patches overlap one pixel (patch {h}x{w}, "
            f"stride {sy}x{sx}); coverage is uint16, at most {MAX_COVERAGE}"
        )


def _row_tops(rows: list[PatchRow], boxes: np.ndarray, valid: np.ndarray, height: int):
    """For each grid row, the first slide row that it or any later grid row touches:
    rows above it are final before that grid row is merged."""
    tops = np.full(len(rows), height, dtype=np.int64)
    for g, row in enumerate(rows):
        ok = valid[row.start : row.stop]
        if ok.any():
            tops[g] = boxes[row.start : row.stop][ok, 1].min()
    return np.minimum.accumulate(tops[::-1])[::-1] if len(tops) else tops


def _span(boxes: np.ndarray) -> Region:
    return Region(
        int(boxes[:, 1].min()),
        int(boxes[:, 3].max()),
        int(boxes[:, 0].min()),
        int(boxes[:, 2].max()),
    )


def column_windows(width: int, cols: int, window_cols: int) -> list[tuple[int, int]]:
    """Columns [x0, x1) of each window: `window_cols` rounded down to whole chunks of
    `cols` columns (at least one chunk), the last window up to the map's edge."""
    step = max(cols, window_cols // cols * cols)
    return [(x0, min(width, x0 + step)) for x0 in range(0, width, step)]


def _window_rows(rows: list[PatchRow], valid: np.ndarray) -> list[PatchRow]:
    """Each grid row cut down to the range of its patches that are `valid` (possibly
    empty): patches are in row-major order, so those of a column window are contiguous."""
    out = []
    for row in rows:
        idx = np.flatnonzero(valid[row.start : row.stop])
        if len(idx):
            out.append(PatchRow(row.row, row.start + int(idx[0]), row.start + int(idx[-1]) + 1))
        else:
            out.append(PatchRow(row.row, row.start, row.start))
    return out


class Merger:
    """Merges the grid rows of `raw` into `writer`, one band canvas per grid row, over
    the columns [x0, x1) of `window` (the whole width by default).

    Patches are clipped to the window, so every pixel of it sees the same additions in
    the same order as in a merge of the whole width: windows change what is held at a
    time (canvases and chunk buffers as wide as the window), not a byte of the output.
    """

    def __init__(
        self,
        raw: RawZarr,
        writer: MapsZarrWriter,
        policy: MemoryPolicy,
        cache: SpillCache,
        options: MergeOptions,
        stats: MergeStats,
        window: tuple[int, int] | None = None,
    ):
        self.raw = raw
        self.writer = writer
        self.policy = policy
        self.cache = cache
        self.options = options
        self.stats = stats
        x0, x1 = window or (0, raw.shape[1])
        self.boxes = raw.clipped_boxes()
        # A patch is counted (stats, progress) in the window where it starts.
        self.counted = (self.boxes[:, 0] >= x0) | (x0 == 0)
        self.boxes[:, [0, 2]] = np.clip(self.boxes[:, [0, 2]], x0, x1)
        self.valid = (self.boxes[:, 0] < self.boxes[:, 2]) & (self.boxes[:, 1] < self.boxes[:, 3])
        self.counted &= self.valid
        self.rows = _window_rows(raw.rows, self.valid)
        # The band that still has live rows (the previous grid row's, overlap included).
        self.carry: Canvas | None = None

    def _storage(self, region: Region):
        nbytes = canvas_nbytes(region, self.raw.channels)
        decision = self.policy.decide(nbytes)
        if not decision.spill:
            return MemoryStorage
        self.cache.require(nbytes)  # uncompressed: its size is exact
        if not self.stats.spill_reason:
            self.stats.spill_reason = decision.reason
            log.warning(
                "spilling accumulators to disk from slide row %d on: %s", region.y0, decision.reason
            )
        root = self.cache.new_dir()
        chunk_cols = max(64, self.raw.patch_shape[1])
        self.stats.spilled_bands += 1

        def factory(shapes):
            return ZarrStorage(
                shapes, root, chunk_cols=chunk_cols, block_cols=self.options.spill_block_cols
            )

        return factory

    def new_canvas(self, region: Region) -> Canvas:
        """A band canvas over `region`, in memory or spilled as the policy decides."""
        factory = self._storage(region)
        self.stats.bands += 1
        self.stats.max_canvas_bytes = max(
            self.stats.max_canvas_bytes, canvas_nbytes(region, self.raw.channels)
        )
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

    def run(self, reader: BatchReader, bar) -> None:
        """Merge every grid row of the window (read with `reader`, made over
        `self.rows`), then write what is left."""
        limits = _row_tops(self.rows, self.boxes, self.valid, self.raw.shape[0])
        try:
            for g, row in enumerate(self.rows):
                self._merge_row(reader, row, int(limits[g]), bar)
            if self.carry is not None:
                self.flush(self.carry, self.raw.shape[0])
        finally:
            if self.carry is not None:
                self.carry.close()
                self.carry = None

    def _drop_finished_carry(self, limit: int) -> None:
        if self.carry is None:
            return
        self.flush(self.carry, limit)
        if self.carry.extent().empty:
            self.carry.close()
            self.carry = None

    def _merge_row(self, reader: BatchReader, row: PatchRow, limit: int, bar) -> None:
        self._drop_finished_carry(limit)
        keep = np.flatnonzero(self.valid[row.start : row.stop]) + row.start
        if not len(keep):
            return
        region = _span(self.boxes[keep])
        carry = self.carry
        if carry is not None and not region.contains(carry.extent()):
            region = region.union(carry.extent())
        band = self.new_canvas(region)
        try:
            self.add_row(band, reader, row, bar)
            if carry is not None:
                band.add_canvas(carry)
        except BaseException:
            band.close()
            raise
        if carry is not None:
            carry.close()
        self.carry = band

    def add_row(self, band: Canvas, reader: BatchReader, row: PatchRow, bar) -> None:
        """Add the valid patches of grid row `row` to `band`."""
        raw, boxes = self.raw, self.boxes
        for start, batch in reader.row(row):
            n = len(next(iter(batch.values())))
            for i in range(start, start + n):
                if not self.valid[i]:
                    continue
                x0, y0, x1, y1 = (int(v) for v in boxes[i])
                bx0, by0 = (int(v) for v in raw.boxes[i, :2])
                ys, xs = slice(y0 - by0, y1 - by0), slice(x0 - bx0, x1 - bx0)
                # float16 -> float32 is exact, so adding the stored dtype (numpy casts
                # on the fly) equals adding a float32 copy, without the copy.
                values = {name: arr[i - start, ys, xs] for name, arr in batch.items()}
                band.add_patch(Region(y0, y1, x0, x1), values)
            counted = int(self.counted[start : start + n].sum())
            self.stats.patches += counted
            bar.update(counted)

"""Band accumulators: a per-head float32 sum and a uint16 coverage count over one region.

The same `Canvas` code runs on either storage, so spilling changes where the numbers
live but not the floating-point operations done on them: spilled and in-memory merges
give identical bytes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

COUNT = "count"


@dataclass(frozen=True)
class Region:
    """Rows [y0, y1) x columns [x0, x1) in slide pixels at model resolution."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        """Rows in the region (0 when empty)."""
        return max(0, self.y1 - self.y0)

    @property
    def width(self) -> int:
        """Columns in the region (0 when empty)."""
        return max(0, self.x1 - self.x0)

    @property
    def empty(self) -> bool:
        """Whether the region has no pixel."""
        return self.height == 0 or self.width == 0

    def contains(self, other: Region) -> bool:
        """Whether `other` lies inside this region."""
        return (
            self.y0 <= other.y0
            and other.y1 <= self.y1
            and self.x0 <= other.x0
            and other.x1 <= self.x1
        )

    def union(self, other: Region) -> Region:
        """The smallest region holding both."""
        return Region(
            min(self.y0, other.y0),
            max(self.y1, other.y1),
            min(self.x0, other.x0),
            max(self.x1, other.x1),
        )

    def rows(self, y0: int, y1: int) -> Region:
        """This region's rows [y0, y1), all its columns."""
        return Region(max(self.y0, y0), min(self.y1, y1), self.x0, self.x1)

    def intersect(self, other: Region) -> Region:
        """The overlap of the two regions (possibly empty)."""
        y0, x0 = max(self.y0, other.y0), max(self.x0, other.x0)
        return Region(y0, min(self.y1, other.y1), x0, min(self.x1, other.x1))


def bounding(regions: list[Region]) -> Region:
    """The smallest region holding all `regions` (empty for none)."""
    if not regions:
        return Region(0, 0, 0, 0)
    return Region(
        min(r.y0 for r in regions),
        max(r.y1 for r in regions),
        min(r.x0 for r in regions),
        max(r.x1 for r in regions),
    )


def canvas_nbytes(region: Region, channels: dict[str, int]) -> int:
    """Bytes of a canvas over `region`: float32 sums per channel plus a uint16 count."""
    per_pixel = 4 * sum(channels.values()) + 2
    return region.height * region.width * per_pixel


class MemoryStorage:
    """numpy arrays; blocks are the whole region."""

    spilled = False

    def __init__(self, shapes: dict[str, tuple[tuple[int, ...], np.dtype]]):
        self.arrays = {name: np.zeros(shape, dtype) for name, (shape, dtype) in shapes.items()}

    def block_shape(self, height: int, width: int) -> tuple[int, int]:
        """Rows and columns of one read-modify-write block over a region this size."""
        return height, width

    def read(self, name: str, sl: tuple[slice, slice]) -> np.ndarray:
        """The values of array `name` at `sl`."""
        return self.arrays[name][sl]

    def add(self, name: str, sl: tuple[slice, slice], values) -> None:
        """Add `values` to array `name` at `sl`, in place."""
        self.arrays[name][sl] += values

    def close(self) -> None:
        """Drop the arrays."""
        self.arrays = {}


class ZarrStorage:
    """Uncompressed Zarr arrays under a cache directory; read-modify-write per block,
    so memory holds a block, not the region."""

    spilled = True

    def __init__(
        self,
        shapes: dict[str, tuple[tuple[int, ...], np.dtype]],
        root: Path,
        chunk_cols: int,
        block_cols: int,
    ):
        self.root = Path(root)
        self.block_cols = block_cols
        group = zarr.open_group(self.root, mode="w", zarr_format=3)
        self.arrays = {}
        for name, (shape, dtype) in shapes.items():
            chunks = (max(1, shape[0]), max(1, min(shape[1], chunk_cols)), *shape[2:])
            self.arrays[name] = group.create_array(
                name,
                shape=shape,
                dtype=dtype,
                chunks=chunks,
                compressors=None,
                fill_value=0,
                config={"write_empty_chunks": True},  # skip zarr's slow emptiness scan
            )

    def block_shape(self, height: int, width: int) -> tuple[int, int]:  # noqa: ARG002 - the storage interface
        """Rows and columns of one read-modify-write block over a region this size."""
        return height, self.block_cols

    def read(self, name: str, sl: tuple[slice, slice]) -> np.ndarray:
        """The values of array `name` at `sl`."""
        return self.arrays[name][sl]

    def add(self, name: str, sl: tuple[slice, slice], values) -> None:
        """Add `values` to array `name` at `sl`, in place."""
        arr = self.arrays[name]
        block = arr[sl]
        block += values  # same in-place op, same dtype as MemoryStorage.add
        arr[sl] = block

    def close(self) -> None:
        """Drop the arrays and remove their directory."""
        self.arrays = {}
        shutil.rmtree(self.root, ignore_errors=True)


class Canvas:
    """Accumulator over `region`. Rows leave from the top (`take_rows`) once final;
    `region` is the part still live, the storage keeps its original origin.

    The canvas remembers the boxes it received, so the live rows can be cut down to
    where data is (`extent`): one wide grid row must not widen every later band."""

    def __init__(self, region: Region, channels: dict[str, int], storage_factory):
        self.region = region
        self._origin = (region.y0, region.x0)
        self.channels = dict(channels)
        shapes = {
            name: ((region.height, region.width, c), np.dtype(np.float32))
            for name, c in channels.items()
        }
        shapes[COUNT] = ((region.height, region.width), np.dtype(np.uint16))
        self.storage = storage_factory(shapes)
        self.boxes: list[Region] = []

    def extent(self) -> Region:
        """Bounding box of the data in the live rows (empty when there is none)."""
        live = [b.intersect(self.region) for b in self.boxes]
        return bounding([b for b in live if not b.empty])

    @property
    def spilled(self) -> bool:
        """Whether the canvas lives on disk."""
        return self.storage.spilled

    def _local(self, r: Region) -> tuple[slice, slice]:
        oy, ox = self._origin
        return slice(r.y0 - oy, r.y1 - oy), slice(r.x0 - ox, r.x1 - ox)

    def blocks(self, r: Region, align: int = 0) -> Iterator[Region]:
        """Cover `r` by storage blocks; with `align`, row ranges never cross a multiple
        of `align` (the output chunk rows), so the writer sees chunks in order."""
        bh, bw = self.storage.block_shape(r.height, r.width)
        y = r.y0
        while y < r.y1:
            y_end = min(r.y1, y + max(1, bh))
            if align:
                y_end = min(y_end, (y // align + 1) * align)
            for x in range(r.x0, r.x1, max(1, bw)):
                yield Region(y, y_end, x, min(x + bw, r.x1))
            y = y_end

    def add_patch(self, box: Region, values: dict[str, np.ndarray]) -> None:
        """Add one patch clipped to `box` (slide coords); `values` are the clipped
        (h, w, C) float32 outputs per head."""
        sl = self._local(box)
        for name, v in values.items():
            self.storage.add(name, sl, v)
        self.storage.add(COUNT, sl, np.uint16(1))
        self.boxes.append(box)

    def add_canvas(self, other: Canvas) -> None:
        """Fold the data in the live rows of `other` into this canvas (must lie inside it)."""
        extent = other.extent()
        if extent.empty:
            return
        assert self.region.contains(extent), (self.region, extent)
        for block in other.blocks(extent):
            src, dst = other._local(block), self._local(block)
            for name in (*self.channels, COUNT):
                self.storage.add(name, dst, other.storage.read(name, src))
        live = (b.intersect(other.region) for b in other.boxes)
        self.boxes.extend(b for b in live if not b.empty)

    def take_rows(
        self, limit: int, align: int = 0
    ) -> Iterator[tuple[Region, dict[str, np.ndarray], np.ndarray]]:
        """Yield (block, sums per head, count) for the live rows above `limit`, then drop them."""
        done = self.region.rows(self.region.y0, limit)
        data = done.intersect(self.extent())
        for block in self.blocks(data, align):
            sl = self._local(block)
            sums = {name: self.storage.read(name, sl) for name in self.channels}
            yield block, sums, self.storage.read(COUNT, sl)
        if done.height:
            self.region = Region(done.y1, self.region.y1, self.region.x0, self.region.x1)
            self.boxes = [b for b in self.boxes if b.y1 > done.y1]

    def close(self) -> None:
        """Release the storage."""
        self.storage.close()

"""`merge/maps.zarr`: one (H, W, C) float32 array per head and an (H, W) uint16 coverage,
chunked in bands of whole rows and written one complete chunk at a time (no partial-chunk
read-modify-write), optionally from a background thread."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
from numcodecs import blosc
from zarr.codecs import BloscCodec, ZstdCodec

from histoflow.merge.canvas import Region

COVERAGE = "coverage"
COMPRESSIONS = ("blosc-lz4", "zstd", "none")


def compressors(name: str):
    if name == "blosc-lz4":
        # Bitshuffle at a low level: about 3x on smooth probability maps at ~800 MB/s.
        return [BloscCodec(cname="lz4", clevel=3, shuffle="bitshuffle")]
    if name == "zstd":
        return [ZstdCodec(level=3)]
    if name == "none":
        return None
    raise ValueError(f"unknown compression '{name}' (one of {', '.join(COMPRESSIONS)})")


@contextlib.contextmanager
def blosc_threads(n: int) -> Iterator[None]:
    """Let Blosc compress with `n` threads from zarr's worker threads (by default it only
    threads when called from the main thread). Blosc's output does not depend on it."""
    saved_use, saved_n = blosc.use_threads, blosc.get_nthreads()
    blosc.use_threads = n > 1
    blosc.set_nthreads(max(1, n))
    try:
        yield
    finally:
        blosc.use_threads = saved_use
        blosc.set_nthreads(saved_n)


class MapWriter:
    """Rows must arrive in non-decreasing chunk order; rows never given stay 0."""

    def __init__(
        self,
        path: str | Path,
        shape: tuple[int, int],
        channels: dict[str, int],
        band_rows: int,
        attrs: dict,
        compression: str = "blosc-lz4",
        background: bool = False,
    ):
        if COVERAGE in channels:
            raise ValueError(f"a head may not be named '{COVERAGE}'")
        self.shape = shape
        self.band_rows = int(band_rows)
        height, width = shape
        self.group = zarr.open_group(Path(path), mode="w", zarr_format=3)
        self.group.attrs.update(attrs)
        codecs = compressors(compression)
        # Chunks without any patch are never written (see `segments`), so zarr's own
        # all-fill-value scan of every chunk (slower than compressing it) is skipped.
        config = {"write_empty_chunks": True}
        self.arrays = {}
        for name, c in channels.items():
            self.arrays[name] = self.group.create_array(
                name,
                shape=(height, width, c),
                chunks=(self.band_rows, width, c),
                dtype="float32",
                fill_value=0.0,
                compressors=codecs,
                config=config,
                dimension_names=["y", "x", "c"],
            )
        self.arrays[COVERAGE] = self.group.create_array(
            COVERAGE,
            shape=(height, width),
            chunks=(self.band_rows, width),
            dtype="uint16",
            fill_value=0,
            compressors=codecs,
            config=config,
            dimension_names=["y", "x"],
        )
        n_sets = 2 if background else 1
        self._sets = [
            {
                name: np.zeros((self.band_rows, *arr.shape[1:]), arr.dtype)
                for name, arr in self.arrays.items()
            }
            for _ in range(n_sets)
        ]
        self._current = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="maps-writer") if background else None
        self._pending: Future | None = None
        self.chunk: int | None = None
        self._dirty = False
        self.chunks_written = 0

    @property
    def buffer_nbytes(self) -> int:
        return sum(b.nbytes for s in self._sets for b in s.values())

    def segments(self, region: Region) -> Iterator[tuple[Region, dict[str, np.ndarray]]]:
        """Split `region` at chunk boundaries; yield each part with writable buffer views
        (heads and coverage) that are all zeros until written."""
        r = self.band_rows
        for y in range((region.y0 // r) * r, region.y1, r):
            part = region.rows(y, y + r)
            if part.empty:
                continue
            self._goto(y // r)
            ys = slice(part.y0 - y, part.y1 - y)
            xs = slice(part.x0, part.x1)
            self._dirty = True
            yield part, {name: buf[ys, xs] for name, buf in self._sets[self._current].items()}

    def _goto(self, chunk: int) -> None:
        if chunk == self.chunk:
            return
        if self.chunk is not None and chunk < self.chunk:
            raise RuntimeError(f"rows arrived out of order: chunk {chunk} after {self.chunk}")
        self._emit()
        self.chunk = chunk

    def _emit(self) -> None:
        if self.chunk is None or not self._dirty:
            return
        buffers = self._sets[self._current]
        y0 = self.chunk * self.band_rows
        n = min(self.band_rows, self.shape[0] - y0)
        self._dirty = False
        self.chunks_written += 1
        if self._pool is None:
            self._write(buffers, y0, n)
            return
        self._wait()
        self._pending = self._pool.submit(self._write, buffers, y0, n)
        self._current = (self._current + 1) % len(self._sets)
        # The other set finished writing in _wait(); clear what the last chunk left there.
        for buf in self._sets[self._current].values():
            buf.fill(0)

    def _write(self, buffers: dict[str, np.ndarray], y0: int, n: int) -> None:
        for name, arr in self.arrays.items():
            arr[y0 : y0 + n] = buffers[name][:n]
        if self._pool is None:
            for buf in buffers.values():
                buf.fill(0)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # re-raises a failed write here, in the merging thread

    def close(self) -> None:
        """Write the last chunk and wait for the writes to finish."""
        try:
            self._emit()
            self._wait()
        finally:
            self.abort()

    def abort(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

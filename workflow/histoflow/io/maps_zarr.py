"""`merge/maps.zarr` (workflow/CONTRACTS.md): its one writer and its one reader.

One (H, W, C) array per head and an (H, W) `coverage` count, chunked in bands of whole
rows. With `merge.encoding: compact` (the default) a probability head is stored as
uint8 with `scale_factor` 1/255 (CF convention: value = stored x scale_factor): a
thresholded one (sigmoid, or softmax over two classes) rounded to the nearest step
(error at most 1/510, and p >= 0.5 exactly where the stored value is >= 128); a class
softmax over three or more classes (encoding key `argmax`) likewise, except that where
rounding ties the winning class with an earlier one, the winner is raised one step (or,
at 255, the tied others lowered one), so the per-pixel argmax is exactly the float
one's (that value within 1.5/255, every other within 1/510). Any other head (hv maps,
energies) is float16; coverage uint8 when no pixel can be covered more than 255 times.
`float32` keeps float32 heads and a uint16 coverage. The group attribute `encodings`
and each array's `scale_factor` say how to decode; the reader decodes.
`MapsZarrWriter` writes one complete chunk at a time (no partial-chunk
read-modify-write), optionally from a background thread; `open_maps` checks the
required attributes and members and reads nothing else until asked;
`read_maps_attrs` reads only the attributes, for rule resources.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr
from numcodecs import blosc
from zarr.codecs import BloscCodec, ZstdCodec

from histoflow.errors import HistoflowError
from histoflow.io.zarr_attrs import read_group_attrs

if TYPE_CHECKING:
    from histoflow.merge.canvas import Region

COVERAGE = "coverage"
COMPRESSIONS = ("blosc-zstd", "blosc-lz4", "zstd", "none")
ENCODINGS = ("compact", "float32")
UINT8_SCALE = 1 / 255
FLOAT16_MAX = float(np.finfo(np.float16).max)
# Columns of a maps.zarr chunk: a tile window (instances) decodes only the chunks it
# overlaps, not whole rows of the slide.
CHUNK_COLUMNS = 1024
REQUIRED_ATTRS = ("shape", "scale", "mpp", "slide_mpp", "model", "heads")


class MapsZarrError(HistoflowError):
    """maps.zarr breaks the contract; the message names the file and what is wrong."""


def compressors(name: str):
    """The zarr codec list of the config value `merge.compression`."""
    if name == "blosc-zstd":
        # Bitshuffle then zstd at level 1: uint8 probabilities and float16 maps 20-45 %
        # smaller than LZ4's, at a few hundred MB/s (benchmarks/README.md).
        return [BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")]
    if name == "blosc-lz4":
        # Bitshuffle at a low level: faster, larger.
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


def head_encoding(head: dict, encoding: str) -> dict:
    """How one head is stored: {"dtype": ..., "scale_factor": ...} (see the module doc)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding '{encoding}' (one of {', '.join(ENCODINGS)})")
    if encoding == "float32":
        return {"dtype": "float32"}
    # uint8 for probabilities: thresholded ones (sigmoid, two-class softmax) rounded to
    # the nearest 1/255 step; a class softmax over three or more classes too, but with
    # `argmax` set, `encode` breaks the ties of near-equal classes that rounding makes,
    # so that the stored argmax is the float one. Unbounded heads (hv, energy): float16.
    activation = head.get("activation")
    if activation == "sigmoid":
        return {"dtype": "uint8", "scale_factor": UINT8_SCALE}
    if activation == "softmax":
        if int(head.get("channels", 1)) <= 2:
            return {"dtype": "uint8", "scale_factor": UINT8_SCALE}
        return {"dtype": "uint8", "scale_factor": UINT8_SCALE, "argmax": True}
    return {"dtype": "float16"}


def coverage_dtype(max_overlap: int, encoding: str) -> str:
    """The narrowest count type for `max_overlap` patches on one pixel."""
    return "uint8" if encoding == "compact" and max_overlap <= 255 else "uint16"


def store_encodings(heads: list[dict], encoding: str, max_overlap: int) -> dict[str, dict]:
    """Head name (and `coverage`) -> stored dtype and scale, as the `encodings` attribute."""
    found = {str(h["name"]): head_encoding(h, encoding) for h in heads}
    found[COVERAGE] = {"dtype": coverage_dtype(max_overlap, encoding)}
    return found


def bytes_per_pixel(encodings: dict[str, dict], channels: dict[str, int]) -> int:
    """Stored (uncompressed) bytes of one map pixel over every head and coverage."""
    size = np.dtype(encodings[COVERAGE]["dtype"]).itemsize
    return size + sum(np.dtype(encodings[n]["dtype"]).itemsize * c for n, c in channels.items())


def keep_argmax(stored: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`stored` (uint8 steps of `values`, rounded to the nearest) with its argmax over
    the last axis made equal to that of `values` (in place where `stored` is contiguous).

    Rounding is monotone, so the two differ only where the winner of `values` ties in
    `stored` with an earlier class (numpy's argmax takes the first maximum). There the
    winner is raised one step, or, already at 255, the classes tied with it lowered one.
    """
    c = stored.shape[-1]
    flat = stored.reshape(-1, c)
    want = np.asarray(values).reshape(-1, c).argmax(axis=1)
    bad = np.flatnonzero(flat.argmax(axis=1) != want)
    if bad.size == 0:
        return stored
    rows, win, i = flat[bad], want[bad], np.arange(bad.size)
    top = rows[i, win]
    full = top == 255
    rows[i[~full], win[~full]] += 1
    tied = full[:, None] & (rows == top[:, None])
    tied[i, win] = False
    rows[tied] -= 1
    flat[bad] = rows
    return flat.reshape(stored.shape)


def encode(values: np.ndarray, enc: dict, name: str) -> np.ndarray:
    """Float values of head `name` in their stored type (rounded to the nearest step;
    with `argmax`, ties of the winning class broken as `keep_argmax` says)."""
    dtype = np.dtype(enc["dtype"])
    if dtype == np.uint8 and "scale_factor" in enc:
        stored = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
        if enc.get("argmax") and stored.ndim > 0 and stored.size > 0:
            return keep_argmax(stored, values)
        return stored
    if dtype == np.float16 and np.abs(values).max(initial=0.0) > FLOAT16_MAX:
        raise MapsZarrError(
            f"head '{name}': values beyond float16's range ({FLOAT16_MAX:g}); set config "
            "field 'merge.encoding' to float32"
        )
    return values.astype(dtype, copy=False)


def decode(values: np.ndarray, enc: dict | None) -> np.ndarray:
    """Stored values as float32 (heads) or as stored (coverage)."""
    if enc is None or np.dtype(enc["dtype"]) == np.float32:
        return values
    if "scale_factor" in enc:
        return values.astype(np.float32) * np.float32(enc["scale_factor"])
    if np.dtype(enc["dtype"]).kind == "f":
        return values.astype(np.float32)
    return values


def chunk_columns(width: int) -> int:
    """Columns of a chunk: CHUNK_COLUMNS, or the whole width of a narrower map."""
    return min(int(width), CHUNK_COLUMNS)


def _create_arrays(group, shape, channels, band_rows, codecs, encodings) -> dict:
    height, width = shape
    cols = chunk_columns(width)
    # Chunks without any patch are never written (see `_write`), so zarr's own
    # all-fill-value scan of every chunk (slower than compressing it) is skipped.
    common = {"compressors": codecs, "config": {"write_empty_chunks": True}}
    arrays = {}
    for name, c in channels.items():
        enc = encodings[name]
        arrays[name] = group.create_array(
            name,
            shape=(height, width, c),
            chunks=(band_rows, cols, c),
            dtype=enc["dtype"],
            fill_value=0,
            dimension_names=["y", "x", "c"],
            attributes={"scale_factor": enc["scale_factor"]} if "scale_factor" in enc else {},
            **common,
        )
    arrays[COVERAGE] = group.create_array(
        COVERAGE,
        shape=(height, width),
        chunks=(band_rows, cols),
        dtype=encodings[COVERAGE]["dtype"],
        fill_value=0,
        dimension_names=["y", "x"],
        **common,
    )
    return arrays


class MapsZarrWriter:
    """Writes maps.zarr at `path`. Rows must arrive in non-decreasing chunk order within
    the current column window (`set_columns`; the whole width until set); rows never
    given stay 0. The buffers are as wide as the window, so a merge that walks the slide
    in column windows holds chunk rows of the window, not of the slide."""

    def __init__(
        self,
        path: str | Path,
        shape: tuple[int, int],
        channels: dict[str, int],
        band_rows: int,
        attrs: dict,
        compression: str = "blosc-zstd",
        background: bool = False,
        encodings: dict[str, dict] | None = None,
    ):
        if COVERAGE in channels:
            raise ValueError(f"a head may not be named '{COVERAGE}'")
        self.shape = shape
        self.band_rows = int(band_rows)
        self.encodings = encodings or store_encodings([{"name": n} for n in channels], "float32", 0)
        self.group = zarr.open_group(Path(path), mode="w", zarr_format=3)
        self.group.attrs.update({**attrs, "encodings": self.encodings})
        self.arrays = _create_arrays(
            self.group, shape, channels, self.band_rows, compressors(compression), self.encodings
        )
        self._n_sets = 2 if background else 1
        self._sets: list[dict[str, np.ndarray]] = []
        self._current = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="maps-writer") if background else None
        self._pending: Future | None = None
        self.chunk: int | None = None
        self._dirty = False
        self.chunks_written = 0
        self.x0 = 0
        self._allocate(0, shape[1])

    def _allocate(self, x0: int, x1: int) -> None:
        # Buffers hold float32 sums and uint16 counts; `_write` encodes each chunk.
        self._sets = []  # the old window's buffers go before the new ones are made
        self._sets = [
            {
                name: np.zeros(
                    (self.band_rows, x1 - x0, *arr.shape[2:]),
                    np.uint16 if name == COVERAGE else np.float32,
                )
                for name, arr in self.arrays.items()
            }
            for _ in range(self._n_sets)
        ]
        self._current = 0
        self.x0, self.x1 = x0, x1

    def set_columns(self, x0: int, x1: int) -> None:
        """Write what is buffered, then take rows of columns [x0, x1) only, from the top
        again. Window edges other than the map's must be multiples of the chunk columns."""
        cols = chunk_columns(self.shape[1])
        if not 0 <= x0 < x1 <= self.shape[1] or x0 % cols or (x1 % cols and x1 != self.shape[1]):
            raise ValueError(f"columns [{x0}, {x1}) are not whole chunks of {cols} columns")
        self._emit()
        self._wait()
        self.chunk = None
        if (x0, x1) != (self.x0, self.x1):
            self._allocate(x0, x1)

    @property
    def buffer_nbytes(self) -> int:
        """Bytes of the chunk buffers (one set, or two when writing in the background)."""
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
            xs = slice(part.x0 - self.x0, part.x1 - self.x0)
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
        if self._pool is None:
            self._write(buffers, y0, n, self.x0)
            return
        self._wait()
        self._pending = self._pool.submit(self._write, buffers, y0, n, self.x0)
        self._current = (self._current + 1) % len(self._sets)
        # The other set finished writing in _wait(); clear what the last chunk left there.
        for buf in self._sets[self._current].values():
            buf.fill(0)

    def _write(self, buffers: dict[str, np.ndarray], y0: int, n: int, wx0: int) -> None:
        # Only the column chunks a patch covered: glass beside the tissue stays unwritten.
        cols = chunk_columns(self.shape[1])
        covered = buffers[COVERAGE][:n].any(axis=0)
        width = covered.shape[0]
        for bx in range(0, width, cols):
            if not covered[bx : bx + cols].any():
                continue
            x0 = wx0 + bx
            for name, arr in self.arrays.items():
                block = buffers[name][:n, bx : bx + cols]
                arr[y0 : y0 + n, x0 : x0 + cols] = encode(block, self.encodings[name], name)
            self.chunks_written += 1
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
        """Stop the writer thread without writing what is still buffered."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


@dataclass(frozen=True)
class MapsZarr:
    """maps.zarr opened for reading: attributes and arrays (heads in the order of the
    `heads` attribute, then coverage), nothing loaded until asked."""

    path: Path
    attrs: dict
    arrays: dict

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of every map, in model pixels."""
        height, width = (int(v) for v in self.attrs["shape"])
        return height, width

    @property
    def scale(self) -> float:
        """Level-0 slide pixels per map pixel."""
        return float(self.attrs["scale"])

    @property
    def mpp(self) -> float:
        """µm per map pixel (the model's resolution)."""
        return float(self.attrs["mpp"])

    @property
    def slide_mpp(self) -> float:
        """µm per level-0 slide pixel."""
        return float(self.attrs["slide_mpp"])

    @property
    def heads(self) -> list[dict]:
        """The model's heads (name, channels, activation, ...) as the store records them."""
        return list(self.attrs["heads"])

    @property
    def channels(self) -> dict[str, int]:
        """Head name -> number of channels of its array."""
        return {name: int(a.shape[2]) for name, a in self.arrays.items() if name != COVERAGE}

    @property
    def band_rows(self) -> int:
        """Rows per stored chunk (the largest over the arrays)."""
        return max(int(a.chunks[0]) for a in self.arrays.values())

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes of all arrays."""
        return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in self.arrays.values())

    def array(self, name: str) -> zarr.Array:
        """The zarr array of a head or of `coverage` (lazy), in its stored type: pass what
        is read from it through `decode`."""
        if name not in self.arrays:
            raise MapsZarrError(f"file '{self.path}': no array '{name}'")
        return self.arrays[name]

    def encoding(self, name: str) -> dict | None:
        """How `name` is stored (None: float32 heads of a store from before encodings)."""
        return self.attrs.get("encodings", {}).get(name)

    def decode(self, name: str, values: np.ndarray) -> np.ndarray:
        """Values read from `array(name)` as float32 probabilities / values (heads)."""
        return decode(np.asarray(values), self.encoding(name))

    def read_rows(self, names: list[str], y0: int, y1: int) -> dict[str, np.ndarray]:
        """Rows [y0, y1) of the named arrays, loaded and decoded."""
        return {name: self.decode(name, self.array(name)[y0:y1]) for name in names}

    def read_window(
        self, names: list[str], window: tuple[int, int, int, int]
    ) -> dict[str, np.ndarray]:
        """The window (y0, y1, x0, x1) of the named arrays, decoded; only the chunks it
        overlaps are read."""
        y0, y1, x0, x1 = window
        return {name: self.decode(name, self.array(name)[y0:y1, x0:x1]) for name in names}

    def bands(
        self, name: str, rows: int | None = None, stored: bool = False
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(y0, block) over the array `name`, `rows` rows at a time (default one chunk),
        decoded, or as stored with `stored` (exports that copy the encoding)."""
        arr = self.array(name)
        rows = rows or self.band_rows
        for y0 in range(0, arr.shape[0], rows):
            block = arr[y0 : y0 + rows]
            yield y0, block if stored else self.decode(name, block)


def _open_group(path: Path) -> zarr.Group:
    try:
        return zarr.open_group(str(path), mode="r")
    except (OSError, ValueError, KeyError, TypeError) as exc:  # missing, or broken metadata
        raise MapsZarrError(f"file '{path}': not a readable maps.zarr ({exc})") from exc


def _check_attrs(path: Path, attrs: dict) -> None:
    missing = [key for key in REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise MapsZarrError(f"file '{path}': attributes missing: {', '.join(missing)}")
    shape = attrs["shape"]
    if len(shape) != 2 or min(int(v) for v in shape) <= 0:
        raise MapsZarrError(f"file '{path}': attribute 'shape' {shape} is not a positive (H, W)")


def _member(path: Path, group: zarr.Group, name: str, ndim: int, shape) -> zarr.Array:
    if name not in group:
        raise MapsZarrError(f"file '{path}': array '{name}' missing")
    arr = group[name]
    if not isinstance(arr, zarr.Array) or arr.ndim != ndim or tuple(arr.shape[:2]) != shape:
        found = getattr(arr, "shape", "a group")
        raise MapsZarrError(
            f"file '{path}': array '{name}' has shape {found}, expected {ndim} dimensions "
            f"starting with attribute shape {list(shape)}"
        )
    return arr


def open_maps(path: str | Path) -> MapsZarr:
    """Open maps.zarr at `path`, checking its required attributes and arrays.

    Raises `MapsZarrError` naming the file when it is missing or breaks the contract.
    """
    path = Path(path)
    group = _open_group(path)
    attrs = dict(group.attrs)
    _check_attrs(path, attrs)
    shape = tuple(int(v) for v in attrs["shape"])
    arrays = {
        str(h["name"]): _member(path, group, str(h["name"]), 3, shape) for h in attrs["heads"]
    }
    arrays[COVERAGE] = _member(path, group, COVERAGE, 2, shape)
    return MapsZarr(path=path, attrs=attrs, arrays=arrays)


def read_maps_attrs(path: str | Path) -> dict | None:
    """maps.zarr's attributes without opening its arrays; None when `path` does not exist.

    A store that exists but cannot be read raises `MapsZarrError` naming the file.
    """
    return read_group_attrs(path, MapsZarrError)

"""Pyramidal, tiled OME-TIFF heatmap: one channel per head channel (class).

The image is at model resolution (the maps' grid) with the OME PhysicalSizeX/Y set to
the model mpp, so a viewer that places images by physical size (QuPath, napari,
OMERO) overlays it on the slide; `scale` (level-0 px per heatmap px) is also in a
MapAnnotation. Probability heads are stored as uint8 (0-255 for 0-1) by default.

Written band by band. TIFF wants level 0 of every channel, then level 1 of every
channel, and so on; level 0 streams from maps.zarr (one pass per channel), and each
level's 2x2 mean, already in the output encoding (uint8: 1 byte per pixel), is spilled
to a temporary .npy memmap (in `tmpdir`) that feeds the next level. Level 0 is read
one channel of one band at a time in its stored type (uint8 heads go through 256-entry
tables, not float bands of every channel) and pooled in column windows; tifffile's
encoder holds a fixed number of tiles. Memory is then a few one-channel uint8 bands
plus fixed buffers: flat in the slide's height and nearly so in its width. The spill
takes about a third of a level-0 channel per channel on disk. tifffile writes no
DateTime tag unless asked and the OME UUID is derived from the sample, so reruns give
identical bytes.
"""

from __future__ import annotations

import errno
import logging
import math
import mmap
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoflow.config import schema_defaults
from histoflow.export import ExportError
from histoflow.export.dense import tile_rows
from histoflow.export.instances import parse_color
from histoflow.io.atomic import atomic_output, job_dir
from histoflow.io.maps_zarr import open_maps
from histoflow.io.space import MB, DiskSpaceError, free_bytes, require_free_space

log = logging.getLogger(__name__)

PROBABILITY_ACTIVATIONS = ("sigmoid", "softmax")
# Level-0 columns pooled at a time (even: windows start on a 2x2 block); maps.zarr's
# chunk width, so a glass chunk is one uniform window.
POOL_COLUMNS = 1024
# Bytes of tiles tifffile collects before compressing them on its threads (its default,
# 512 MB, held that many tiles, and through them their bands, in memory); about one
# full-size band of one channel.
ENCODER_BUFFER = 16 * 2**20
HEATMAP_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "histoflow:heatmap")


@dataclass(frozen=True)
class Channel:
    """One image channel: a head's channel, its display name and colour (if any)."""

    head: str
    index: int
    name: str
    color: tuple[int, int, int] | None


def _head_classes(model: dict, head: str, channels: int) -> list[dict] | None:
    """Classes of the post-processing task whose probability head is `head`, if they fit."""
    for task in (model or {}).get("postprocess", []) or []:
        classes = task.get("classes") or []
        if (task.get("heads") or {}).get("probability") == head and len(classes) == channels:
            return classes
    return None


def heatmap_channels(attrs: dict, heads: list[str] | None, dtype: str) -> list[Channel]:
    """Channels to write: the listed heads, or every probability head when none listed."""
    by_name = {h["name"]: h for h in attrs["heads"]}
    if heads:
        unknown = [h for h in heads if h not in by_name]
        if unknown:
            raise ExportError(
                f"config field 'export.heatmap.heads': unknown head(s) {', '.join(unknown)} "
                f"(model heads: {', '.join(by_name)})"
            )
        chosen = [by_name[h] for h in heads]
    else:
        chosen = [h for h in attrs["heads"] if h.get("activation") in PROBABILITY_ACTIVATIONS]
        if not chosen:
            raise ExportError(
                "config field 'export.heatmap.heads': the model has no probability head "
                "(sigmoid/softmax); list the heads to write and set dtype float32"
            )
    out = []
    for head in chosen:
        if dtype == "uint8" and head.get("activation") not in PROBABILITY_ACTIVATIONS:
            raise ExportError(
                f"config field 'export.heatmap.heads': head '{head['name']}' has activation "
                f"'{head.get('activation')}', not a probability in 0-1; uint8 would clip it "
                "(set export.heatmap.dtype to float32)"
            )
        n = int(head["channels"])
        classes = _head_classes(attrs.get("model"), head["name"], n)
        for c in range(n):
            if classes:
                name = f"{head['name']}: {classes[c]['name']}"
                color = parse_color(classes[c].get("color"), c)
            else:
                name = head["name"] if n == 1 else f"{head['name']}[{c}]"
                color = None
            out.append(Channel(head["name"], c, name, color))
    return out


def level_shapes(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """Level 0 first, halving (rounded up) until the image fits in one tile."""
    shapes = [(height, width)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return shapes


def pool2(block: np.ndarray) -> np.ndarray:
    """2x2 mean; an odd last row/column is repeated (edge padding)."""
    h, w = block.shape
    padded = np.pad(block, ((0, h % 2), (0, w % 2)), mode="edge")
    return padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean(axis=(1, 3))


def encode(values: np.ndarray, dtype: str) -> np.ndarray:
    """Map values (float) -> stored pixels: uint8 round(255 * p) or float32 as is."""
    values = np.nan_to_num(values.astype(np.float32, copy=False), nan=0.0)
    if dtype == "uint8":
        return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    return values


def pool2_sum(values: np.ndarray) -> np.ndarray:
    """`pool2` of float32 values bit for bit, as (a + b) + (c + d) over each 2x2 block
    (numpy's order for that mean, checked for maps at least 3 columns wide: the bytes of
    the file must not depend on how a band is cut into column windows), divided by 4
    (exact). Narrower maps go through `pool2` itself."""
    h, w = values.shape
    if h % 2 or w % 2:
        values = np.pad(values, ((0, h % 2), (0, w % 2)), mode="edge")
    total = values[0::2, 0::2] + values[0::2, 1::2]
    total += values[1::2, 0::2] + values[1::2, 1::2]
    total /= np.float32(4)
    return total


def downsample(encoded: np.ndarray) -> np.ndarray:
    """Next pyramid level from already encoded pixels (uint8: the mean rounded half to
    even, as np.rint of the float mean, in integers)."""
    if encoded.dtype != np.uint8:
        return pool2(encoded)
    h, w = encoded.shape
    if h % 2 or w % 2:
        encoded = np.pad(encoded, ((0, h % 2), (0, w % 2)), mode="edge")
    total = encoded[0::2, 0::2].astype(np.uint16)
    total += encoded[0::2, 1::2]
    total += encoded[1::2, 0::2]
    total += encoded[1::2, 1::2]
    rest = total & 3
    total >>= 2  # floor of the mean; up at .75, and at .5 to the even neighbour
    total += (rest == 3) | ((rest == 2) & (total & 1 == 1))
    return total.astype(np.uint8)


def _ome_color(rgb: tuple[int, int, int]) -> int:
    """OME Color: RGBA packed in a signed 32-bit int."""
    value = (rgb[0] << 24) | (rgb[1] << 16) | (rgb[2] << 8) | 0xFF
    return value - (1 << 32) if value >= 1 << 31 else value


def ome_metadata(sample: str, attrs: dict, channels: list[Channel], dtype: str) -> dict:
    """tifffile's OME metadata: physical pixel size, channel names (and colours), and
    the map's scale and slide resolution in a MapAnnotation."""
    mpp = float(attrs["mpp"])
    metadata = {
        "axes": "CYX",
        "UUID": f"urn:uuid:{uuid.uuid5(HEATMAP_NAMESPACE, sample)}",
        "Name": f"{sample} heatmap",
        "PhysicalSizeX": mpp,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": mpp,
        "PhysicalSizeYUnit": "µm",
        "Channel": {"Name": [c.name for c in channels]},
        "MapAnnotation": {
            "Namespace": "histoflow/heatmap",
            "sample": sample,
            "scale": repr(float(attrs["scale"])),
            "slide_mpp": repr(float(attrs["slide_mpp"])),
            "encoding": "uint8 = round(255 * value)" if dtype == "uint8" else "float32",
        },
    }
    if all(c.color for c in channels):
        metadata["Channel"]["Color"] = [_ome_color(c.color) for c in channels]
    return metadata


def _anonymous_memmap(path: Path, dtype: str, shape, sample: str | None = None) -> np.ndarray:
    """A disk-backed array whose file is unlinked at once where the OS allows it (POSIX):
    the mapping keeps the space until the array is released or the process dies, so a
    killed export leaves no level file behind. Its blocks are allocated first where the
    OS can (posix_fallocate): a disk that fills up meanwhile ends in an error here, not
    in SIGBUS on a write to the mapping."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    try:
        if hasattr(os, "posix_fallocate"):
            with open(path, "r+b") as fh:
                os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
    except OSError as exc:  # other errors: no fallocate here, the free-space check stands
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            del array
            path.unlink(missing_ok=True)
            raise DiskSpaceError(
                f"sample '{sample or '?'}': OME-TIFF level file '{path}' cannot be allocated "
                f"({exc.strerror}), only {free_bytes(path.parent) / MB:.1f} MB free there"
            ) from exc
    if os.name == "posix":
        path.unlink()
    return array


def release_rows(array: np.ndarray, y0: int, y1: int) -> None:
    """Drop rows [y0, y1) of a file-backed memmap from this process's memory (madvise
    DONTNEED): written pages stay in the file (the page cache writes them back) and are
    read again on the next access, so the spill's pages do not pile up in the job's RSS
    level after level. No-op where madvise is missing."""
    raw = getattr(array, "_mmap", None)
    if raw is None or not hasattr(raw, "madvise") or y1 <= y0:
        return
    row = array.strides[0]
    data = array.ctypes.data - np.frombuffer(raw, np.uint8, count=1).ctypes.data
    start = data + y0 * row
    start -= start % mmap.PAGESIZE
    stop = min(len(raw), data + y1 * row)
    if stop > start:
        raw.madvise(mmap.MADV_DONTNEED, start, stop - start)


@dataclass(frozen=True)
class _Uint8Tables:
    """A uint8-stored head: its 256 decoded values and their output pixels (each what
    decode then encode gives it), so level 0 of a band is a look-up, or the stored band
    itself where the table is the identity (uint8 probabilities, scale 1/255)."""

    values: np.ndarray
    table: np.ndarray
    identity: bool
    unit: bool

    def pixels(self, stored: np.ndarray) -> np.ndarray:
        """Level-0 pixels of stored ones."""
        return stored if self.identity else self.table[stored]

    def uniform_mean(self, step: int):
        """The pooled pixel of a window whose stored pixels all equal `step` (each of its
        2x2 means is then this one, `pool2_sum` being the same sums everywhere)."""
        return self.encode_mean(pool2_sum(np.full((2, 2), self.values[step])))[0, 0]

    def encode_mean(self, mean: np.ndarray) -> np.ndarray:
        """`encode` of 2x2 means of the values; values in [0, 1] need neither its NaN
        nor its clip step (1 + 1 ulp times 255 still rounds to 255)."""
        if self.unit:
            return np.rint(mean * np.float32(255.0)).astype(np.uint8)
        return encode(mean, self.table.dtype.name)


def _channel_bands(arr, index: int, band: int):
    """(y0, rows [y0, y0 + band) of channel `index`) of a (H, W, C) zarr array, as stored:
    one channel, not float32 of every channel of the head, read one chunk row at a time,
    so that each chunk is decoded once, not once per band it straddles."""
    height, step = arr.shape[0], int(arr.chunks[0])
    pending, read = [], 0
    for y0 in range(0, height, band):
        y1 = min(y0 + band, height)
        while read < y1:
            pending.append(np.asarray(arr[read : read + step, :, index]))
            read += pending[-1].shape[0]
        block = pending[0] if len(pending) == 1 else np.concatenate(pending)
        # copies: the band's tiles, queued in the encoder, keep only the band alive
        yield y0, block if block.shape[0] == y1 - y0 else block[: y1 - y0].copy()
        pending = [block[y1 - y0 :].copy()] if read > y1 else []


def _uniform(window: np.ndarray) -> bool:
    """Whether every stored pixel of the window is the same (glass, unwritten chunks)."""
    return window.size > 0 and window.min() == window.max()


def _uint8_tables(maps, head: str, dtype: str) -> _Uint8Tables | None:
    """The look-up tables of `head` if it is stored as uint8 (None: decode a band)."""
    if maps.array(head).dtype != np.uint8:
        return None
    steps = np.arange(256, dtype=np.uint8)
    values = np.asarray(maps.decode(head, steps), dtype=np.float32)
    table = encode(values, dtype)
    identity = table.dtype == np.uint8 and bool(np.array_equal(table, steps))
    unit = dtype == "uint8" and values.min() >= 0 and values.max() * np.float32(255) < 255.5
    return _Uint8Tables(values, table, identity, bool(unit))


class _Pyramid:
    """The tiles of every level in TIFF order; each level's pixels spill to .npy
    memmaps under `spill_dir`, from which the next level is pooled."""

    def __init__(self, maps, channels, shapes, tile: int, dtype: str, spill_dir: Path):
        self.maps = maps
        self.channels = channels
        self.shapes = shapes
        self.tile = tile
        self.dtype = dtype
        self.band = -(-tile_rows(maps) // tile) * tile  # whole tiles: pooling stays aligned
        self.spills: dict[int, list[np.ndarray]] = {
            level: [
                _anonymous_memmap(
                    spill_dir / f"level{level}-c{i}.npy", dtype, shape, maps.attrs.get("sample")
                )
                for i in range(len(channels))
            ]
            for level, shape in enumerate(shapes)
            if level
        }

    def _level0_bands(self, i: int, pool: bool):
        ch = self.channels[i]
        arr = self.maps.array(ch.head)
        tables = _uint8_tables(self.maps, ch.head, self.dtype)
        for y0, stored in _channel_bands(arr, ch.index, self.band):
            pixels = self._pixels(ch.head, stored) if tables is None else tables.pixels(stored)
            yield y0, pixels, self._pooled(ch.head, stored, tables) if pool else None

    def _windows(self):
        """Column windows of level 0 (one for a map at most 2 wide: see `pool2_sum`)."""
        width = self.shapes[0][1]
        step = POOL_COLUMNS if width > 2 else width
        return [slice(x0, min(x0 + step, width)) for x0 in range(0, width, step)]

    def _values(self, head: str, stored: np.ndarray) -> np.ndarray:
        """Map values (float32) of stored pixels."""
        return np.asarray(self.maps.decode(head, stored), dtype=np.float32)

    def _pixels(self, head: str, stored: np.ndarray) -> np.ndarray:
        """Level-0 pixels of a head that is not stored as uint8, window by window."""
        pixels = np.empty(stored.shape, self.dtype)
        for cols in self._windows():
            pixels[:, cols] = encode(self._values(head, stored[:, cols]), self.dtype)
        return pixels

    def _pooled(self, head: str, stored: np.ndarray, tables) -> np.ndarray:
        """Level-1 pixels of a level-0 band: 2x2 means of the map values (not of the
        rounded pixels), window by window; a uniform window of a uint8 head (glass,
        unwritten chunks) is filled without computing its means."""
        wide = self.shapes[0][1] > 2
        pooled = np.empty((-(-stored.shape[0] // 2), -(-stored.shape[1] // 2)), self.dtype)
        for cols in self._windows():
            window = stored[:, cols]
            half = slice(cols.start // 2, -(-cols.stop // 2))
            if tables is not None and wide and _uniform(window):
                pooled[:, half] = tables.uniform_mean(int(window[0, 0]))
                continue
            values = self._values(head, window)
            mean = pool2_sum(values) if wide else pool2(values)
            pooled[:, half] = tables.encode_mean(mean) if tables else encode(mean, self.dtype)
        return pooled

    def _spilled_bands(self, level: int, i: int, pool: bool):
        spill = self.spills[level][i]
        for y0 in range(0, spill.shape[0], self.band):
            pixels = np.array(spill[y0 : y0 + self.band])
            release_rows(spill, y0, y0 + self.band)
            yield y0, pixels, downsample(pixels) if pool else None

    def source_bands(self, level: int, i: int, pool: bool):
        """(y0, pixels of the band, its next-level pixels if `pool`)."""
        if level == 0:
            return self._level0_bands(i, pool)
        return self._spilled_bands(level, i, pool)

    def _band_tiles(self, q: np.ndarray, width: int):
        tile = self.tile
        for ty in range(0, q.shape[0], tile):
            for tx in range(0, width, tile):
                t = q[ty : ty + tile, tx : tx + tile]
                if t.shape != (tile, tile):
                    t = np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1])))
                yield t

    def tiles(self, level: int):
        """Every tile of `level`, channel by channel, filling the next level's spill."""
        width = self.shapes[level][1]
        nxt = self.spills.get(level + 1)
        for i in range(len(self.channels)):
            for y0, q, pooled in self.source_bands(level, i, pool=nxt is not None):
                if pooled is not None:
                    rows = slice(y0 // 2, y0 // 2 + pooled.shape[0])
                    nxt[i][rows] = pooled
                    release_rows(nxt[i], rows.start, rows.stop)
                yield from self._band_tiles(q, width)
            if nxt is not None:
                nxt[i].flush()

    def close(self) -> None:
        """Release the memmaps (before their directory goes)."""
        self.spills.clear()


@dataclass(frozen=True)
class HeatmapOptions:
    """The config section `export.heatmap`; defaults come from the config schema."""

    heads: tuple[str, ...]
    tile: int
    dtype: str
    compression: str

    @classmethod
    def from_config(cls, options: dict | None = None) -> HeatmapOptions:
        """The section's values over the schema's defaults."""
        values = {**schema_defaults("export.heatmap"), **(options or {})}
        opts = cls(
            heads=tuple(values["heads"] or ()),
            tile=int(values["tile"]),
            dtype=values["dtype"],
            compression=values["compression"],
        )
        if opts.tile % 16:
            raise ExportError(
                f"config field 'export.heatmap.tile': {opts.tile} is not a multiple of 16"
            )
        return opts


def _check_space(shapes, n_channels, dtype, compression, out_path, tmpdir, sample) -> None:
    """Refuse early when the level files (exact size, in `tmpdir`) or the image cannot
    fit: a memory-mapped level file on a full disk dies of SIGBUS, not an error."""
    sizes = [h * w * n_channels * np.dtype(dtype).itemsize for h, w in shapes]
    where = tmpdir or tempfile.gettempdir()
    require_free_space(where, sum(sizes[1:]), sample=sample, what="OME-TIFF level files")
    require_free_space(
        out_path, sum(sizes), sample=sample, what="OME-TIFF", compressed=compression != "none"
    )


def export_ometiff(
    maps_path: str | Path,
    out_path: str | Path,
    sample: str,
    options: HeatmapOptions | None = None,
    *,
    threads: int = 1,
    tmpdir: str | Path | None = None,
) -> list[Channel]:
    """Write the heatmap of `options.heads` (none listed: every probability head) as
    OME-TIFF."""
    import tifffile

    options = options or HeatmapOptions.from_config()
    tile, dtype, compression = options.tile, options.dtype, options.compression
    heads = list(options.heads) or None
    maps = open_maps(maps_path)
    channels = heatmap_channels(maps.attrs, heads, dtype)
    height, width = maps.shape
    shapes = level_shapes(height, width, tile)
    mpp = maps.mpp
    bigtiff = len(channels) * height * width * np.dtype(dtype).itemsize * 4 / 3 > 2**31
    metadata = ome_metadata(sample, maps.attrs, channels, dtype)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _check_space(shapes, len(channels), dtype, compression, out_path, tmpdir, sample)
    with (
        job_dir("levels", sample, tmpdir) as td,
        atomic_output(out_path) as tmp,
        tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=True) as tif,
    ):
        pyramid = _Pyramid(maps, channels, shapes, tile, dtype, Path(td))
        for level, (h, w) in enumerate(shapes):
            px = mpp * 2**level
            tif.write(
                pyramid.tiles(level),
                shape=(len(channels), h, w),
                dtype=dtype,
                tile=(tile, tile),
                photometric="minisblack",
                compression=None if compression == "none" else compression,
                resolution=(1e4 / px, 1e4 / px),
                resolutionunit="CENTIMETER",
                subifds=len(shapes) - 1 if level == 0 else None,
                subfiletype=1 if level else 0,
                metadata=metadata if level == 0 else None,
                maxworkers=max(1, threads),
                buffersize=ENCODER_BUFFER,
            )
        pyramid.close()
    log.info(
        "%s: heatmap %dx%d, %d channel(s), %d level(s)",
        sample,
        width,
        height,
        len(channels),
        len(shapes),
    )
    return channels

"""Pyramidal, tiled OME-TIFF heatmap: one channel per head channel (class).

The image is at model resolution (the maps' grid) with the OME PhysicalSizeX/Y set to
the model mpp, so a viewer that places images by physical size (QuPath, napari,
OMERO) overlays it on the slide; `scale` (level-0 px per heatmap px) is also in a
MapAnnotation. Probability heads are stored as uint8 (0-255 for 0-1) by default.

Written band by band. TIFF wants level 0 of every channel, then level 1 of every
channel, and so on; level 0 streams from maps.zarr (one pass per channel), and each
level's 2x2 mean, already in the output encoding (uint8: 1 byte per pixel), is spilled
to a temporary .npy memmap (in `tmpdir`) that feeds the next level. Memory holds a few
row bands whatever the slide size; the spill takes about a third of a level-0 channel
per channel on disk. tifffile writes no DateTime tag unless asked and the OME UUID is
derived from the sample, so reruns give identical bytes.
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


def downsample(encoded: np.ndarray) -> np.ndarray:
    """Next pyramid level from already encoded pixels (uint8: rounded mean)."""
    pooled = pool2(encoded.astype(np.float32))
    return np.rint(pooled).astype(np.uint8) if encoded.dtype == np.uint8 else pooled


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
        for y0, block in self.maps.bands(ch.head, rows=self.band):
            values = np.asarray(block[..., ch.index], dtype=np.float32)
            # level 1 pools the map values, not the rounded pixels
            pooled = encode(pool2(values), self.dtype) if pool else None
            yield y0, encode(values, self.dtype), pooled

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

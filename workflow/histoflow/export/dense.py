"""Slide-scale maps (maps.zarr) to Zarr, HDF5 and NPZ, band by band.

All three carry the same members as maps.zarr (one (H, W, C) float32 array per head
and `coverage` (H, W) uint16) and its attributes, among them `scale` (level-0 px per
map px), `mpp` and `slide_mpp`. Zarr and HDF5 are re-chunked into square tiles for
viewport reads; NPZ has no chunks, so it is refused past a size limit.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np

from histoflow.export import ExportError
from histoflow.io.atomic import atomic_output
from histoflow.io.maps_zarr import MapsZarr, open_maps
from histoflow.io.npz import NpzFile

log = logging.getLogger(__name__)

TILE = 256


def tile_rows(maps: MapsZarr) -> int:
    """Rows per read: whole source chunks, rounded up to whole output tiles."""
    return max(TILE, -(-maps.band_rows // TILE) * TILE)


def _bands(maps: MapsZarr, name: str):
    # As stored: the copies keep maps.zarr's encoding and its `scale_factor`.
    return maps.bands(name, rows=tile_rows(maps), stored=True)


def _array_attrs(src) -> dict:
    return {k: v for k, v in dict(src.attrs).items() if k == "scale_factor"}


def _chunks(arr) -> tuple[int, ...]:
    h, w = arr.shape[:2]
    return (max(1, min(TILE, h)), max(1, min(TILE, w)), *arr.shape[2:])


def export_zarr(maps_path: str | Path, out_path: str | Path) -> None:
    """Zarr v3 group, tiled chunks, consolidated metadata."""
    import zarr

    maps = open_maps(maps_path)
    with atomic_output(out_path) as tmp:
        group = zarr.create_group(store=str(tmp), zarr_format=3, attributes=_sorted(maps.attrs))
        for name, src in maps.arrays.items():
            dst = group.create_array(
                name,
                shape=src.shape,
                chunks=_chunks(src),
                dtype=src.dtype,
                fill_value=0,
                attributes=_array_attrs(src),
            )
            for y0, block in _bands(maps, name):
                dst[y0 : y0 + block.shape[0]] = block
        with warnings.catch_warnings():
            # Zarr warns that consolidated metadata is not yet in the v3 spec; readers
            # of this store (zarr-python) understand it.
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(tmp))


def export_hdf5(maps_path: str | Path, out_path: str | Path) -> None:
    """HDF5 with one tiled, gzip-compressed dataset per map; attributes as in maps.zarr.

    Attributes that are not numbers or strings (model card, heads) are JSON strings.
    """
    import h5py

    maps = open_maps(maps_path)
    with atomic_output(out_path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in _sorted(maps.attrs).items():
            f.attrs[key] = _h5_attr(value)
        for name, src in maps.arrays.items():
            dst = f.create_dataset(
                name,
                shape=src.shape,
                dtype=src.dtype,
                chunks=_chunks(src),
                compression="gzip",
                compression_opts=4,
                shuffle=True,
                fillvalue=0,
                track_times=False,
            )
            dst.attrs.update(_array_attrs(src))
            for y0, block in _bands(maps, name):
                dst[y0 : y0 + block.shape[0]] = block


def export_npz(maps_path: str | Path, out_path: str | Path, max_mb: float) -> None:
    """NPZ (one member per map, plus `attrs` as a JSON string); refused above `max_mb`.

    np.load decompresses a member whole, so the limit is on the uncompressed size.
    """
    maps = open_maps(maps_path)
    size_mb = maps.nbytes / 1e6
    if size_mb > max_mb:
        raise ExportError(
            f"file '{maps_path}': maps are {size_mb:.0f} MB uncompressed, above "
            f"config field 'export.npz_max_mb' = {max_mb:g}; NPZ loads whole arrays into "
            "memory, so use the zarr or hdf5 format for this slide or raise the limit"
        )
    with atomic_output(out_path) as tmp, NpzFile(tmp) as npz:
        for name, src in maps.arrays.items():
            npz.add_streamed(name, src.shape, src.dtype, (b for _, b in _bands(maps, name)))
        npz.add("attrs", np.array(json.dumps(_sorted(maps.attrs), sort_keys=True)))


def _sorted(attrs: dict) -> dict:
    return json.loads(json.dumps(attrs, sort_keys=True))


def _h5_attr(value):
    if isinstance(value, bool | int | float | str):
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        return np.asarray(value)
    return json.dumps(value, sort_keys=True)

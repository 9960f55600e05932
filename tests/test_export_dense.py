"""Slide-scale maps to Zarr / HDF5 / NPZ and the pyramidal OME-TIFF heatmap."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import export_fixtures as fx
import h5py
import numpy as np
import pytest
import tifffile
import zarr
from histoflow.export import ExportError, dense, ometiff
from histoflow.io.maps_zarr import (
    COVERAGE,
    MapsZarrError,
    MapsZarrWriter,
    open_maps,
    store_encodings,
)
from histoflow.merge.canvas import Region

H, W = 300, 420


@pytest.fixture(scope="module")
def maps(tmp_path_factory):
    return fx.make_maps(tmp_path_factory.mktemp("maps") / "maps.zarr", H, W, band_rows=64)


@pytest.fixture
def band_limited(monkeypatch):
    """Make every read of a map fail if it spans more rows than one export band."""
    real_open = dense.open_maps
    reads = []

    class Guard:
        def __init__(self, arr, limit):
            self._arr, self._limit = arr, limit

        def __getattr__(self, name):
            return getattr(self._arr, name)

        def __getitem__(self, key):
            rows = key[0] if isinstance(key, tuple) else key
            n = len(range(*rows.indices(self._arr.shape[0])))
            assert n <= self._limit, f"read {n} rows at once"
            reads.append(n)
            return self._arr[key]

    def guarded(path):
        m = real_open(path)
        limit = dense.tile_rows(m)
        return dataclasses.replace(m, arrays={k: Guard(a, limit) for k, a in m.arrays.items()})

    monkeypatch.setattr(dense, "open_maps", guarded)
    monkeypatch.setattr(ometiff, "open_maps", guarded)
    return reads


def _expected():
    return fx.map_values(H, W)


def _same_files(a, b):
    if a.is_dir():
        fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        return fa == fb and all((a / f).read_bytes() == (b / f).read_bytes() for f in fa)
    return a.read_bytes() == b.read_bytes()


def test_zarr_export_is_consolidated_tiled_and_complete(tmp_path, maps, band_limited):
    out = tmp_path / "S1.zarr"
    dense.export_zarr(maps, out)
    assert band_limited and max(band_limited) < H  # streamed in bands
    assert "consolidated_metadata" in json.loads((out / "zarr.json").read_text())
    g = zarr.open_consolidated(str(out), mode="r")
    assert g.attrs["scale"] == fx.SCALE and g.attrs["mpp"] == fx.MPP
    assert g.attrs["slide_mpp"] == fx.SLIDE_MPP and g.attrs["shape"] == [H, W]
    for name, want in _expected().items():
        assert g[name].chunks[:2] == (256, 256)
        assert g[name].dtype == want.dtype
        np.testing.assert_array_equal(g[name][:], want)


def test_hdf5_export_datasets_and_attributes(tmp_path, maps, band_limited):
    out = tmp_path / "S1.h5"
    dense.export_hdf5(maps, out)
    assert band_limited and max(band_limited) < H
    with h5py.File(out, "r") as f:
        assert f.attrs["scale"] == fx.SCALE and f.attrs["mpp"] == fx.MPP
        assert list(f.attrs["shape"]) == [H, W]
        assert json.loads(f.attrs["heads"]) == fx.MODEL["heads"]
        for name, want in _expected().items():
            assert f[name].chunks[:2] == (256, 256) and f[name].compression == "gzip"
            np.testing.assert_array_equal(f[name][()], want)


def test_npz_export_and_size_limit(tmp_path, maps):
    out = tmp_path / "S1.npz"
    dense.export_npz(maps, out, max_mb=10)
    with np.load(out, allow_pickle=False) as z:
        attrs = json.loads(str(z["attrs"]))
        assert attrs["scale"] == fx.SCALE and attrs["mpp"] == fx.MPP
        for name, want in _expected().items():
            np.testing.assert_array_equal(z[name], want)
    too_big = tmp_path / "big.npz"
    with pytest.raises(ExportError, match=r"export\.npz_max_mb.*zarr or hdf5"):
        dense.export_npz(maps, too_big, max_mb=0.1)
    assert not too_big.exists()


@pytest.mark.parametrize("fmt", ["zarr", "h5", "npz", "ome.tif"])
def test_dense_reruns_give_identical_bytes(tmp_path, maps, fmt):
    def run(path):
        if fmt == "zarr":
            dense.export_zarr(maps, path)
        elif fmt == "h5":
            dense.export_hdf5(maps, path)
        elif fmt == "npz":
            dense.export_npz(maps, path, max_mb=10)
        else:
            ometiff.export_ometiff(
                maps, path, "S1", ometiff.HeatmapOptions.from_config({"tile": 64})
            )
        return path

    assert _same_files(run(tmp_path / f"a.{fmt}"), run(tmp_path / f"b.{fmt}"))


def test_missing_attribute_names_the_file(tmp_path):
    bad = fx.make_maps(tmp_path / "bad.zarr", 16, 16, band_rows=8)
    g = zarr.open_group(str(bad), mode="r+")
    del g.attrs["scale"]
    with pytest.raises(MapsZarrError, match=r"bad\.zarr.*attributes missing: scale"):
        dense.export_zarr(bad, tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_ometiff_pyramid_tiles_and_physical_size(tmp_path, maps, band_limited):
    out = tmp_path / "S1.ome.tif"
    tile = 64
    spill = tmp_path / "spill"
    spill.mkdir()
    channels = ometiff.export_ometiff(
        maps, out, "S1", ometiff.HeatmapOptions.from_config({"tile": tile}), tmpdir=spill
    )
    assert band_limited and max(band_limited) < H
    # default: the probability heads (sigmoid nucleus, softmax tissue), not 'energy'
    assert [(c.head, c.index) for c in channels] == [("nucleus", 0), ("tissue", 0), ("tissue", 1)]
    # channel names and colours come from the task whose probability head it is
    assert [c.name for c in channels] == ["nucleus", "tissue: Background", "tissue: Tissue"]
    assert channels[2].color == (255, 127, 14)
    want = _expected()
    level0 = np.stack([want["nucleus"][..., 0], want["tissue"][..., 0], want["tissue"][..., 1]])
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "CYX" and series.dtype == np.uint8
        shapes = [lvl.shape for lvl in series.levels]
        n_levels = math.ceil(math.log2(max(H, W) / tile)) + 1
        assert len(shapes) == n_levels
        assert shapes[0] == (3, H, W)
        assert shapes[1] == (3, math.ceil(H / 2), math.ceil(W / 2))
        assert max(shapes[-1][1:]) <= tile
        for lvl in series.levels:
            assert lvl.keyframe.is_tiled
            assert (lvl.keyframe.tilelength, lvl.keyframe.tilewidth) == (tile, tile)
        base = series.levels[0].asarray()
        np.testing.assert_array_equal(base, np.rint(np.clip(level0, 0, 1) * 255).astype(np.uint8))
        half = series.levels[1].asarray()
        pooled = np.stack([ometiff.pool2(c) for c in level0])
        np.testing.assert_array_equal(half, np.rint(pooled * 255).astype(np.uint8))
        # deeper levels: rounded 2x2 means of the level above
        quarter = series.levels[2].asarray()
        np.testing.assert_array_equal(quarter, np.stack([ometiff.downsample(c) for c in half]))
        # physical size: OME pixel size and TIFF resolution tags, µm per pixel at each level
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
        pixels = ome["Image"]["Pixels"]
        assert pixels["PhysicalSizeX"] == fx.MPP and pixels["PhysicalSizeY"] == fx.MPP
        assert pixels["PhysicalSizeXUnit"] == "µm"
        assert [c["Name"] for c in pixels["Channel"]] == [c.name for c in channels]
        for k, lvl in enumerate(series.levels):
            num, den = lvl.keyframe.tags["XResolution"].value
            assert 1e4 * den / num == pytest.approx(fx.MPP * 2**k)
    assert list(spill.iterdir()) == []  # level spills removed


def test_ometiff_float32_and_head_errors(tmp_path, maps):
    out = tmp_path / "e.ome.tif"
    opts = {"heads": ["energy"], "dtype": "float32", "tile": 128}
    ometiff.export_ometiff(maps, out, "S1", ometiff.HeatmapOptions.from_config(opts))
    with tifffile.TiffFile(out) as tif:
        data = tif.series[0].levels[0].asarray()  # tifffile squeezes the single channel
        assert data.dtype == np.float32 and data.shape == (H, W)
        assert tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]["SizeC"] == 1
        np.testing.assert_array_equal(data, _expected()["energy"][..., 0])
    with pytest.raises(ExportError, match=r"export\.heatmap\.heads.*'energy'.*float32"):
        ometiff.export_ometiff(
            maps,
            tmp_path / "x.ome.tif",
            "S1",
            ometiff.HeatmapOptions.from_config({"heads": ["energy"]}),
        )
    with pytest.raises(ExportError, match=r"unknown head.*nope"):
        ometiff.export_ometiff(
            maps,
            tmp_path / "x.ome.tif",
            "S1",
            ometiff.HeatmapOptions.from_config({"heads": ["nope"]}),
        )
    assert not (tmp_path / "x.ome.tif").exists()


def test_released_spill_rows_leave_memory_and_keep_their_values(tmp_path):
    # The OME-TIFF level spill: pages written and released leave the job's RSS (they
    # would otherwise pile up level after level) and read back unchanged.
    from histoflow.export.ometiff import _anonymous_memmap, release_rows

    def rss_mb() -> float:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    spill = _anonymous_memmap(tmp_path / "level1.npy", "uint8", (4096, 16384))
    before = rss_mb()
    for y0 in range(0, 4096, 256):
        spill[y0 : y0 + 256] = (y0 // 256) + 1
    grown = rss_mb() - before
    release_rows(spill, 0, 4096)
    assert grown > 48 and rss_mb() - before < grown / 4  # 64 MB written, most released
    assert np.array_equal(np.unique(spill[::256, ::1000]), np.arange(1, 17))


def test_pool2_sum_and_integer_downsample_match_the_float_mean():
    # The export pools level 0 in column windows and deeper uint8 levels in integers;
    # the file's bytes stay those of numpy's float mean over each 2x2 block.
    rng = np.random.default_rng(7)
    steps = np.arange(256, dtype=np.float32) * np.float32(1 / 255)
    for shape in [(2, 3), (3, 5), (5, 4), (64, 1023), (1, 7), (256, 4097)]:
        for values in (steps[rng.integers(0, 256, shape)], rng.random(shape, np.float32)):
            want = ometiff.pool2(values)
            got = ometiff.pool2_sum(values)
            assert got.dtype == want.dtype == np.float32
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        pixels = rng.integers(0, 256, shape).astype(np.uint8)
        want = np.rint(ometiff.pool2(pixels.astype(np.float32))).astype(np.uint8)
        np.testing.assert_array_equal(ometiff.downsample(pixels), want)
    # every 2x2 sum, halves among them (rounded to even)
    sums = np.arange(1021)
    block = np.zeros((2, 2 * sums.size), np.uint8)
    block[0, 0::2] = np.minimum(sums, 255)
    block[0, 1::2] = np.clip(sums - 255, 0, 255)
    block[1, 0::2] = np.clip(sums - 510, 0, 255)
    block[1, 1::2] = np.clip(sums - 765, 0, 255)
    np.testing.assert_array_equal(ometiff.downsample(block)[0], np.rint(sums / 4))


def _compact_maps(path, height, width, band_rows):
    # uint8 heads as merge writes them: a glass block never written, a uniform block
    heads = [
        {"name": "np", "channels": 2, "activation": "softmax"},
        {"name": "tp", "channels": 3, "activation": "softmax"},
    ]
    encodings = store_encodings(heads, "compact", 4)
    attrs = {
        "sample": "S1",
        "model": {"heads": heads},
        "mpp": 0.5,
        "slide_mpp": 0.5,
        "scale": 1.0,
        "shape": [height, width],
        "heads": heads,
    }
    rng = np.random.default_rng(3)
    writer = MapsZarrWriter(
        path, (height, width), {"np": 2, "tp": 3}, band_rows, attrs, encodings=encodings
    )
    values = {}
    for part, buffers in writer.segments(Region(0, height, 0, width)):
        for head in heads:
            v = rng.random((part.y1 - part.y0, width, head["channels"]), np.float32) ** 2
            v /= v.sum(axis=-1, keepdims=True)
            v[:, 1024:1500] = 1 / head["channels"]
            buffers[head["name"]][...] = v
        buffers[COVERAGE][...] = 1
        buffers[COVERAGE][:, :1024] = 0  # left chunks are glass: not written
    writer.close()
    maps = open_maps(path)
    for head in heads:
        values[head["name"]] = maps.read_rows([head["name"]], 0, height)[head["name"]]
    return path, values


def test_ometiff_of_uint8_maps_is_their_encoding(tmp_path):
    # Level 0 is the stored uint8 pixels, level 1 the rounded means of the decoded
    # values (not of the pixels), whatever the glass and uniform windows.
    maps, values = _compact_maps(tmp_path / "maps.zarr", 203, 2050, 50)
    out = tmp_path / "c.ome.tif"
    ometiff.export_ometiff(maps, out, "S1", ometiff.HeatmapOptions.from_config({"tile": 64}))
    level0 = np.concatenate([np.moveaxis(values[h], -1, 0) for h in ("np", "tp")])
    with tifffile.TiffFile(out) as tif:
        levels = tif.series[0].levels
        np.testing.assert_array_equal(levels[0].asarray(), ometiff.encode(level0, "uint8"))
        want = np.stack([ometiff.encode(ometiff.pool2(c), "uint8") for c in level0])
        np.testing.assert_array_equal(levels[1].asarray(), want)
        assert (levels[0].asarray()[:, :, :1024] == 0).all()

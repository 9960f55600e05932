"""Streaming per-tile prediction writers, each file opened with its real reader."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import zarr
from histoflow.io.tile_stores import (
    HDF5Writer,
    NPZWriter,
    OutputFormat,
    PredictionWriter,
    TileResponse,
    ZarrWriter,
    create_writer,
)

N, D = 11, 5
META = {"sample": "S1", "patch_size": 224, "patch_level": 0, "mpp": 0.5, "nested": {"a": [1, 2]}}
IN_GENES = ["EPCAM", "PTPRC", "ACTA2"]
OUT_GENES = ["CD3E", "MS4A1"]


def _inputs():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(N, D)).astype(np.float32)
    coords = np.c_[np.arange(N) * 224, np.arange(N) % 3 * 224].astype(np.int64)
    ratio = rng.uniform(size=N).astype(np.float32)
    thumb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    mask = (thumb[..., 0] > 128).astype(np.uint8) * 255
    return features, coords, ratio, thumb, mask


def _write(fmt: OutputFormat, path, n_rows=N, chunk_rows=4):
    features, coords, ratio, thumb, mask = _inputs()
    with create_writer(fmt, path, chunk_rows=chunk_rows) as w:
        w.open(N, D)
        w.set_metadata(META)
        w.set_thumbnail(thumb)
        w.set_tissue_mask(mask)
        w.set_gene_names(input_genes=IN_GENES, output_genes=OUT_GENES)
        for i in range(n_rows):
            w.write(TileResponse(features[i], tuple(coords[i]), float(ratio[i])))
    return path


def _read(fmt: OutputFormat, path) -> dict:
    """Read back with the format's own library."""
    if fmt is OutputFormat.HDF5:
        with h5py.File(path, "r") as f:
            out = {k: f[k][()] for k in ("features", "coords", "tissue_ratio")}
            out |= {k: f[k][()] for k in ("thumbnail", "tissue_mask")}
            out |= {k: [s.decode() for s in f[k][()]] for k in ("input_genes", "output_genes")}
            out["metadata"] = json.loads(f.attrs["metadata"])
        return out
    if fmt is OutputFormat.ZARR:
        g = zarr.open_group(str(path), mode="r")
        out = {k: g[k][:] for k in ("features", "coords", "tissue_ratio", "thumbnail")}
        out["tissue_mask"] = g["tissue_mask"][:]
        out |= {k: [str(s) for s in g[k][:]] for k in ("input_genes", "output_genes")}
        out["metadata"] = g.attrs["metadata"]
        return out
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in ("features", "coords", "tissue_ratio", "thumbnail", "tissue_mask")}
        out |= {k: z[k].tolist() for k in ("input_genes", "output_genes")}
        out["metadata"] = json.loads(str(z["metadata"]))
    return out


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_round_trip_same_content_in_every_format(tmp_path, fmt):
    features, coords, ratio, thumb, mask = _inputs()
    got = _read(fmt, _write(fmt, tmp_path / f"out{fmt.suffix}"))
    assert got["features"].dtype == np.float32 and got["features"].shape == (N, D)
    np.testing.assert_array_equal(got["features"], features)
    assert got["coords"].dtype == np.int64 and got["coords"].shape == (N, 2)
    np.testing.assert_array_equal(got["coords"], coords)
    np.testing.assert_array_equal(got["tissue_ratio"], ratio)
    np.testing.assert_array_equal(got["thumbnail"], thumb)
    np.testing.assert_array_equal(got["tissue_mask"], mask)
    assert got["metadata"] == META
    assert got["input_genes"] == IN_GENES and got["output_genes"] == OUT_GENES


def test_hdf5_layout_fits_clam_and_trident(tmp_path):
    path = _write(OutputFormat.HDF5, tmp_path / "out.h5")
    with h5py.File(path, "r") as f:
        assert f["coords"].shape == (N, 2) and f["features"].dtype == np.float32
        assert f["coords"].attrs["patch_size"] == 224
        assert f["coords"].attrs["patch_level"] == 0
        # preallocated for N rows, chunked by the writer's block size
        assert f["features"].chunks == (4, D)


def test_zarr_arrays_are_preallocated_and_chunked_by_block(tmp_path):
    g = zarr.open_group(str(_write(OutputFormat.ZARR, tmp_path / "out.zarr")), mode="r")
    assert g["features"].chunks == (4, D)
    assert g.attrs["num_tiles"] == N and g.attrs["embedding_dim"] == D


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_fewer_rows_than_announced_are_truncated(tmp_path, fmt):
    features, *_ = _inputs()
    got = _read(fmt, _write(fmt, tmp_path / f"out{fmt.suffix}", n_rows=6))
    np.testing.assert_array_equal(got["features"], features[:6])
    assert got["coords"].shape == (6, 2) and got["tissue_ratio"].shape == (6,)


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_bad_rows_raise_and_leave_no_file(tmp_path, fmt):
    path = tmp_path / f"out{fmt.suffix}"
    with pytest.raises(ValueError, match="embedding_dim"), create_writer(fmt, path) as w:
        w.open(2, D)
        w.write(TileResponse(np.zeros(D), (0, 0), 1.0))
        w.write(TileResponse(np.zeros(D + 1), (0, 0), 1.0))
    with pytest.raises(ValueError, match="more than num_tiles"), create_writer(fmt, path) as w:
        w.open(1, D)
        w.write(TileResponse(np.zeros(D), (0, 0), 1.0))
        w.write(TileResponse(np.zeros(D), (0, 0), 1.0))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_rerun_gives_identical_bytes(tmp_path, fmt):
    a = _write(fmt, tmp_path / f"a{fmt.suffix}")
    b = _write(fmt, tmp_path / f"b{fmt.suffix}")
    if fmt is OutputFormat.ZARR:
        files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert files_a == files_b
        assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    else:
        assert a.read_bytes() == b.read_bytes()


def test_base_gene_names_are_a_no_op_and_formats_resolve(tmp_path):
    class Minimal(PredictionWriter):
        def _open_backend(self):
            pass

        def _write_rows(self, start, features, coords, ratio):
            pass

        def _close_backend(self):
            pass

    w = Minimal(tmp_path / "x")
    w.set_gene_names(input_genes=["A"])
    assert w.input_genes is None
    assert isinstance(create_writer("hdf5", tmp_path / "a.h5"), HDF5Writer)
    assert isinstance(create_writer(OutputFormat.NPZ, tmp_path / "a.npz"), NPZWriter)
    assert isinstance(create_writer("zarr", tmp_path / "a.zarr"), ZarrWriter)
    with pytest.raises(ValueError, match="unknown output format 'tiff'"):
        create_writer("tiff", tmp_path / "a.tif")

"""The demo slide end to end with every export format on, each opened with its reader."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
import tifffile
import yaml
import zarr
from conftest import DEMO_CONFIG, DEMO_SAMPLE, REPO
from histoflow.export import dense, geojson, ometiff, sqlite_store, summary, tables
from histoflow.export.instances import object_uuid
from histoflow.io.maps_zarr import open_maps
from shapely.geometry import shape

pytestmark = pytest.mark.e2e

SAMPLE = DEMO_SAMPLE
FORMATS = ["geojson", "cells", "sqlite", "tsv", "summary", "zarr", "hdf5", "npz", "ometiff"]


@pytest.fixture(scope="module")
def demo(demo_run):
    # The shared session run: every format on (conftest.DEMO_CONFIG).
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert DEMO_CONFIG["export"]["formats"] == FORMATS and "export" in cfg["stages"]
    workdir = demo_run
    res = workdir / "results" / SAMPLE
    out = res / "export"
    sizes = {
        p.name: sum(f.stat().st_size for f in ([p] if p.is_file() else p.rglob("*")))
        for p in sorted(out.iterdir())
    }
    print("\nexport sizes (bytes):", json.dumps(sizes, indent=1))
    return workdir, res, out


def _maps(res):
    return zarr.open_group(str(res / "merge" / "maps.zarr"), mode="r")


def test_all_formats_written(demo):
    _, _, out = demo
    names = sorted(p.name for p in out.iterdir())
    suffixes = [".cells.geojson", ".geojson", ".h5", ".npz", ".objects.tsv", ".ome.tif"]
    suffixes += [".sqlite", ".summary.tsv", ".zarr"]
    assert names == sorted(SAMPLE + s for s in suffixes)


def test_objects_land_on_the_slide(demo):
    _, res, out = demo
    table = pq.read_table(res / "instances" / "instances.parquet").to_pandas()
    assert len(table) > 100  # the demo slide has thousands of nuclei
    table = table.set_index("id", drop=False)
    feats = json.loads((out / f"{SAMPLE}.geojson").read_text(encoding="utf-8"))["features"]
    assert len(feats) == len(table)
    w, h = json.loads((res / "mask" / "mask.json").read_text())["slide_dimensions"]
    for f in feats:
        row = table.loc[f["properties"]["metadata"]["histoflow_id"]]
        assert f["id"] == object_uuid(SAMPLE, row["id"])
        geom = shape(f["geometry"])
        assert geom.is_valid and geom.area > 0
        assert f["properties"]["objectType"] == "detection"
        assert f["properties"]["classification"]["name"] == row["class_name"]
        x0, y0, x1, y1 = geom.bounds
        assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
        assert (x0, y0, x1, y1) == pytest.approx(
            (row["bbox_x0"], row["bbox_y0"], row["bbox_x1"], row["bbox_y1"]), abs=0.02
        )
    objects = pd.read_csv(out / f"{SAMPLE}.objects.tsv", sep="\t")
    assert list(objects["instance_id"]) == list(table["id"])
    # a viewport query on the store gives what a brute-force scan of the table gives
    rect = shapely.box(w * 0.3, h * 0.3, w * 0.3 + 400, h * 0.3 + 300)
    want = {
        object_uuid(SAMPLE, i)
        for i, g in zip(table["id"], shapely.from_wkb(table["contour"]), strict=True)
        if g.intersects(rect)
    }
    got = {o["id"] for o in sqlite_store.query_rect(out / f"{SAMPLE}.sqlite", *rect.bounds)}
    assert want and got == want


def test_summary_matches_upstream_files(demo):
    workdir, res, out = demo
    row = pd.read_csv(out / f"{SAMPLE}.summary.tsv", sep="\t").iloc[0]
    mask = json.loads((res / "mask" / "mask.json").read_text())
    assert row["tissue_area_mm2"] == pytest.approx(mask["tissue_area_mm2"], abs=1e-4)
    boxes = zarr.open_array(str(res / "infer" / "raw.zarr" / "boxes"), mode="r")
    assert row["patches"] == boxes.shape[0]
    n = pq.read_metadata(res / "instances" / "instances.parquet").num_rows
    assert row["objects"] == n
    assert row["objects_per_mm2"] == pytest.approx(n / mask["tissue_area_mm2"], abs=0.01)
    for rule in ("mask_tissue", "infer_patches", "merge_patches", "extract_instances"):
        bench = pd.read_csv(workdir / "benchmarks" / rule / f"{SAMPLE}.tsv", sep="\t")
        assert row[f"time_{rule}_s"] == pytest.approx(bench["s"].mean(), abs=0.01)


def test_dense_exports_equal_the_maps(demo):
    _, res, out = demo
    maps = _maps(res)
    names = [h["name"] for h in maps.attrs["heads"]] + ["coverage"]
    z = zarr.open_consolidated(str(out / f"{SAMPLE}.zarr"), mode="r")
    assert z.attrs["scale"] == maps.attrs["scale"] and z.attrs["mpp"] == maps.attrs["mpp"]
    with h5py.File(out / f"{SAMPLE}.h5", "r") as f, np.load(out / f"{SAMPLE}.npz") as npz:
        assert f.attrs["mpp"] == maps.attrs["mpp"]
        for name in names:
            want = maps[name][...]
            np.testing.assert_array_equal(z[name][...], want)
            np.testing.assert_array_equal(f[name][()], want)
            np.testing.assert_array_equal(npz[name], want)


def test_heatmap_pyramid(demo):
    _, res, out = demo
    maps = _maps(res)
    prob = [h for h in maps.attrs["heads"] if h["activation"] in ("sigmoid", "softmax")]
    with tifffile.TiffFile(out / f"{SAMPLE}.ome.tif") as tif:
        assert tif.is_ome
        levels = tif.series[0].levels
        assert len(levels) >= 3 and levels[0].keyframe.tilewidth == 256
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert pixels["PhysicalSizeX"] == pytest.approx(maps.attrs["mpp"])
        assert pixels["SizeC"] == sum(h["channels"] for h in prob)
        base = levels[0].asarray().reshape(pixels["SizeC"], *maps.attrs["shape"])
    head = prob[0]["name"]
    values = open_maps(res / "merge" / "maps.zarr").read_rows([head], 0, base.shape[1])[head]
    np.testing.assert_array_equal(base[0], ometiff.encode(values[..., 0], "uint8"))


def test_rerun_of_the_engine_gives_the_same_bytes(demo, tmp_path):
    workdir, res, out = demo
    inst, maps = res / "instances" / "instances.parquet", res / "merge" / "maps.zarr"
    again = tmp_path
    geojson.export_geojson(inst, again / "a.geojson", SAMPLE)
    sqlite_store.export_sqlite(inst, again / "a.sqlite", SAMPLE)
    tables.export_objects_tsv(inst, again / "a.tsv", SAMPLE)
    dense.export_hdf5(maps, again / "a.h5")
    dense.export_npz(maps, again / "a.npz", max_mb=512)
    ometiff.export_ometiff(maps, again / "a.ome.tif", SAMPLE)
    bench = {
        r: workdir / "benchmarks" / r / f"{SAMPLE}.tsv"
        for r in ("mask_tissue", "infer_patches", "merge_patches", "extract_instances")
    }
    row = summary.summarize(
        SAMPLE, res / "mask" / "mask.json", inst, res / "infer" / "raw.zarr", bench
    )
    summary.write_summary(row, again / "a.summary.tsv")
    for ext in ("geojson", "sqlite", "objects.tsv", "h5", "npz", "ome.tif", "summary.tsv"):
        mine = again / f"a.{ext.replace('objects.', '')}"
        assert mine.read_bytes() == (out / f"{SAMPLE}.{ext}").read_bytes(), ext
    dense.export_zarr(maps, again / "a.zarr")
    theirs = out / f"{SAMPLE}.zarr"
    files = sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file())
    files.remove(theirs.joinpath(".snakemake_timestamp").relative_to(theirs))  # Snakemake's
    mine = again / "a.zarr"
    assert files == sorted(p.relative_to(mine) for p in mine.rglob("*") if p.is_file())
    assert all((mine / f).read_bytes() == (theirs / f).read_bytes() for f in files)

"""Export rules through Snakemake on seeded upstream files: config switches formats."""

from __future__ import annotations

import json

import export_fixtures as fx
import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from conftest import run_workflow

pytestmark = pytest.mark.e2e

EXPORT_RULES = [
    "export_geojson",
    "export_sqlite",
    "export_tsv",
    "export_summary",
    "export_zarr",
    "export_hdf5",
    "export_npz",
    "export_ometiff",
]
SUFFIXES = {
    "geojson": ".geojson",
    "sqlite": ".sqlite",
    "tsv": ".objects.tsv",
    "summary": ".summary.tsv",
    "zarr": ".zarr",
    "hdf5": ".h5",
    "npz": ".npz",
    "ometiff": ".ome.tif",
}


def _seed(workdir, sample):
    res = workdir / "results" / sample
    for sub in ("mask", "infer", "merge", "instances"):
        (res / sub).mkdir(parents=True, exist_ok=True)
    fx.make_mask_json(res / "mask" / "mask.json")
    fx.make_raw(res / "infer" / "raw.zarr")
    fx.make_maps(res / "merge" / "maps.zarr", 120, 200, band_rows=32)
    fx.make_instances(res / "instances" / "instances.parquet", n=20)
    stages = ("mask_tissue", "infer_patches", "merge_patches", "extract_instances")
    for rule, seconds in zip(stages, (2.5, 30.0, 4.0, 7.25)):
        fx.make_benchmark(workdir / "benchmarks" / rule / f"{sample}.tsv", seconds)


def test_formats_switch_on_and_off(tmp_path, demo_slide):
    sample = "s1"
    _seed(tmp_path, sample)
    out = tmp_path / "results" / sample / "export"
    common = dict(
        samples=[{"sample": sample, "path": demo_slide}],
        # Only export rules: the seeded files stand in for the upstream stages.
        args=["--allowed-rules", *EXPORT_RULES],
    )
    run_workflow(
        tmp_path,
        config={"stages": ["export"], "export": {"formats": ["geojson", "npz"]}},
        **common,
    )
    assert sorted(p.name for p in out.iterdir()) == [f"{sample}.geojson", f"{sample}.npz"]

    run_workflow(
        tmp_path,
        config={"stages": ["export"], "export": {"heatmap": {"tile": 64}, "formats": [*SUFFIXES]}},
        **common,
    )
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{sample}{s}" for s in SUFFIXES.values()
    )
    for rule in EXPORT_RULES:
        assert (tmp_path / "logs" / rule / f"{sample}.log").exists()
    feats = json.loads((out / f"{sample}.geojson").read_text(encoding="utf-8"))["features"]
    assert len(feats) == 22  # 20 ellipses + bow tie + holed square; the flat one is left out
    summary = pd.read_csv(out / f"{sample}.summary.tsv", sep="\t").iloc[0]
    assert summary["objects"] == 23 and summary["patches"] == 12
    assert summary["time_mask_tissue_s"] == 2.5 and summary["time_infer_patches_s"] == 30.0
    assert summary["time_merge_patches_s"] == 4.0 and summary["time_extract_instances_s"] == 7.25
    with h5py.File(out / f"{sample}.h5", "r") as f:
        assert f["nucleus"].shape == (120, 200, 1)
    assert zarr.open_consolidated(str(out / f"{sample}.zarr"), mode="r")["coverage"].shape == (
        120,
        200,
    )
    with tifffile.TiffFile(out / f"{sample}.ome.tif") as tif:
        assert tif.is_ome and len(tif.series[0].levels) == 3  # 200 -> 100 -> 50 px, tile 64
        assert tif.pages[0].tilewidth == 64
    with np.load(out / f"{sample}.npz") as z:
        assert z["tissue"].shape == (120, 200, 2)

"""Per-slide summary TSV."""

from __future__ import annotations

import json

import export_fixtures as fx
import pandas as pd
import pytest
from histoflow.config import schema_defaults
from histoflow.export import ExportError
from histoflow.export.summary import summarize, write_summary
from histoflow.synthetic.raw import write_synthetic_raw


def write_raw(path, *args):
    write_synthetic_raw(path, *args)
    return path


@pytest.fixture
def inputs(tmp_path):
    return {
        "mask_json": fx.make_mask_json(tmp_path / "mask.json", tissue_area_mm2=0.5),
        "instances": fx.make_instances(tmp_path / "instances.parquet", n=60),
        # 3 rows of 4 patches of 64 px: 12 patches.
        "maps": write_raw(tmp_path / "raw.zarr", (192, 256), (64, 64), (64, 64), {"p": 1}),
        "benchmarks": {
            "mask_tissue": fx.make_benchmark(tmp_path / "b" / "mask_tissue.tsv", 1.5),
            "extract_instances": fx.make_benchmark(tmp_path / "b" / "extract.tsv", 12.25),
        },
    }


def test_summary_row(tmp_path, inputs):
    out = tmp_path / "S1.summary.tsv"
    write_summary(summarize("S1", **inputs), out)
    got = pd.read_csv(out, sep="\t")
    assert len(got) == 1
    row = got.iloc[0]
    assert row["sample"] == "S1" and row["model"] == "test-model"
    assert row["tissue_area_mm2"] == 0.5 and row["patches"] == 12
    # 63 objects in the table, classes assigned round-robin
    assert row["objects"] == 63
    assert row["objects_nuclei_Tumor"] == 21 and row["density_nuclei_Tumor_per_mm2"] == 42.0
    assert row["objects_per_mm2"] == 126.0
    assert row["time_mask_tissue_s"] == 1.5 and row["time_extract_instances_s"] == 12.25


def test_summary_without_timings_is_rerun_stable(inputs):
    a = summarize("S1", **inputs, timings=False)
    assert not [k for k in a if k.startswith("time_")]
    inputs["benchmarks"]["mask_tissue"].write_text("s\th:m:s\n9.0\t0:00:09\n")
    assert summarize("S1", **inputs, timings=False) == a


def test_summary_without_tissue_leaves_density_empty(tmp_path, inputs):
    inputs["mask_json"] = fx.make_mask_json(tmp_path / "empty.json", tissue_area_mm2=0.0)
    row = summarize("S1", **inputs)
    assert row["density_nuclei_Tumor_per_mm2"] == "" and row["objects_nuclei_Tumor"] == "21"


def test_bad_benchmark_names_the_file(tmp_path, inputs):
    bad = tmp_path / "b" / "bad.tsv"
    bad.write_text("seconds\n1.0\n")
    inputs["benchmarks"]["merge_patches"] = bad
    with pytest.raises(ExportError, match=r"bad\.tsv.*column 's'"):
        summarize("S1", **inputs)


def test_timings_default_is_the_schema_default(inputs):
    assert schema_defaults("export")["summary_timings"] is True
    assert summarize("S1", **inputs) == summarize("S1", **inputs, timings=True)


def test_mask_without_a_field_names_the_file(tmp_path, inputs):
    mask = json.loads(inputs["mask_json"].read_text())
    del mask["tissue_area_mm2"]
    inputs["mask_json"] = tmp_path / "partial.json"
    inputs["mask_json"].write_text(json.dumps(mask))
    with pytest.raises(ExportError, match=r"partial\.json.*'tissue_area_mm2'"):
        summarize("S1", **inputs)

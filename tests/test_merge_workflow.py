"""merge_patches through Snakemake: rule wiring, config, log, spill cache in the job's tmpdir."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import run_workflow
from histoflow.merge import resources
from histoflow.merge.stitch import MergeOptions, merge_patches
from histoflow.merge.synthetic import write_synthetic_raw

pytestmark = pytest.mark.e2e


def test_rule_merges_a_seeded_raw_store_with_forced_spilling(tmp_path, demo_slide):
    raw = tmp_path / "results" / "s1" / "infer" / "raw.zarr"
    write_synthetic_raw(raw, (300, 200), (64, 64), (48, 48), {"nucleus": 1, "hv": 2}, seed=7)
    jobtmp = tmp_path / "jobtmp"
    jobtmp.mkdir()
    proc = run_workflow(
        tmp_path,
        samples=[{"sample": "s1", "path": demo_slide}],
        config={"merge": {"memory_percent": 0, "band_rows": 32}},
        # Only this rule: the seeded raw.zarr stands in for infer_patches' output.
        # (A flag last, so --configfile does not swallow the target.)
        args=[
            "--allowed-rules",
            "merge_patches",
            "--default-resources",
            f"tmpdir='{jobtmp}'",
            "-p",
        ],
        targets=["results/s1/merge/maps.zarr"],
    )
    maps = zarr.open_group(tmp_path / "results" / "s1" / "merge" / "maps.zarr", mode="r")
    assert maps.attrs["band_rows"] == 32 and maps["hv"].chunks == (32, 200, 2)
    merge_patches(raw, tmp_path / "ref.zarr", MergeOptions(memory_percent=100, band_rows=32))
    ref = zarr.open_group(tmp_path / "ref.zarr", mode="r")
    for name in ("nucleus", "hv", "coverage"):
        np.testing.assert_array_equal(maps[name][...], ref[name][...])
    log = (tmp_path / "logs" / "merge_patches" / "s1.log").read_text()
    assert "spilling accumulators to disk from slide row 0 on: RSS" in log
    assert f"spill cache removed: {jobtmp}" in log
    assert "24/24" in log  # the progress bar
    assert list(jobtmp.iterdir()) == []
    assert (tmp_path / "benchmarks" / "merge_patches" / "s1.tsv").exists()
    # mem_mb came from raw.zarr's attributes (band size), not the profile's default.
    expected = resources.merge_mem_mb(resources.raw_attrs(raw), band_rows=32)
    assert f"mem_mb={expected}," in proc.stdout

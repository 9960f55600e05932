"""End to end: mask_tissue -> infer_patches -> merge_patches on a small generated slide,
with spilling forced, so the rule, its config, log, resources and the spill cache in
the job's tmpdir are all exercised by one Snakemake run."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import run_workflow
from histoflow.io.maps_zarr import open_maps
from histoflow.merge import resources
from histoflow.synthetic.tissue import tissue_blocks
from histoflow.synthetic.writers import write_png

pytestmark = pytest.mark.e2e


def naive_merge(raw: zarr.Group) -> tuple[dict[str, np.ndarray], np.ndarray]:
    height, width = raw.attrs["shape"]
    boxes = raw["boxes"][...]
    count = np.zeros((height, width), np.int64)
    for x0, y0, x1, y1 in boxes:
        count[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)] += 1
    maps = {}
    for head in raw.attrs["heads"]:
        values = raw[f"heads/{head['name']}"][...].astype(np.float64)
        total = np.zeros((height, width, head["channels"]))
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            cy1, cx1 = min(y1, height), min(x1, width)
            total[y0:cy1, x0:cx1] += values[i, : cy1 - y0, : cx1 - x0]
        maps[head["name"]] = total / np.maximum(count, 1)[..., None]
    return maps, count


def test_slide_to_maps_with_overlap_and_forced_spilling(tmp_path):
    # 1000 x 1300 px at the model's 0.5 µm/px: not a multiple of the stride, with
    # background that the mask drops (coverage 0) and tissue blocks that it keeps.
    rgb, _ = tissue_blocks(1000, 1300, seed=4)
    slide = write_png(tmp_path / "blocks.png", rgb)
    jobtmp = tmp_path / "jobtmp"
    jobtmp.mkdir()
    proc = run_workflow(
        tmp_path,
        samples=[{"sample": "cmu", "path": slide, "mpp": 0.5}],
        config={
            "stages": ["merge"],
            # Stride below the 256 px output: every band overlaps the next (fold path).
            "inference": {"stride": 192},
            "merge": {"memory_percent": 0, "band_rows": 100},
            "keep": ["raw", "maps"],
        },
        # A flag last, so --default-resources does not swallow what follows.
        args=["--default-resources", f"tmpdir='{jobtmp}'", "-p"],
    )
    raw = zarr.open_group(tmp_path / "results" / "cmu" / "infer" / "raw.zarr", mode="r")
    maps = zarr.open_group(tmp_path / "results" / "cmu" / "merge" / "maps.zarr", mode="r")
    height, width = raw.attrs["shape"]
    assert maps.attrs["shape"] == [height, width] and maps.attrs["scale"] == raw.attrs["scale"]
    assert maps.attrs["band_rows"] == 100

    expect, count = naive_merge(raw)
    cov = maps["coverage"][...]
    # merge.encoding compact: counts up to 4 fit uint8; probabilities uint8, others float16
    cols = min(width, 1024)  # chunks: band_rows x up to 1024 columns
    assert cov.dtype == np.uint8 and maps["coverage"].chunks == (100, cols)
    np.testing.assert_array_equal(cov, count)
    # A chunk is stored only where a patch landed.
    touched = [
        cov[y : y + 100, x : x + cols].any()
        for y in range(0, height, 100)
        for x in range(0, width, cols)
    ]
    assert maps["coverage"].nchunks_initialized == sum(touched) < len(touched)
    assert cov.max() == 4  # 2x2 overlap of 256 px patches at stride 192
    assert (cov == 0).any()  # masked-out background: "no patch here"
    reader = open_maps(tmp_path / "results" / "cmu" / "merge" / "maps.zarr")
    for name, ref in expect.items():
        enc = maps.attrs["encodings"][name]
        assert maps[name].dtype == enc["dtype"] and maps[name].chunks == (100, cols, ref.shape[2])
        merged = reader.read_rows([name], 0, height)[name]
        if enc["dtype"] == "uint8":  # half a 1/255 step
            np.testing.assert_allclose(merged, ref, rtol=0, atol=1 / 510 + 1e-6, err_msg=name)
        else:  # float16: 11 bits of mantissa
            np.testing.assert_allclose(merged, ref, rtol=2**-11, atol=1e-6, err_msg=name)
        assert not merged[cov == 0].any()

    log = (tmp_path / "logs" / "merge_patches" / "cmu.log").read_text()
    assert f"merged {raw['boxes'].shape[0]} patches" in log
    assert "spilling accumulators to disk from slide row 0 on: RSS" in log
    assert f"spill cache removed: {jobtmp}" in log
    assert not list(jobtmp.glob("histoflow-merge-*"))  # (infer_patches leaves torch caches)
    assert (tmp_path / "benchmarks" / "merge_patches" / "cmu.tsv").exists()
    # mem_mb came from raw.zarr's attributes (band size), not the profile's default.
    expected = resources.merge_mem_mb(dict(raw.attrs), band_rows=100)
    assert f"mem_mb={expected}," in proc.stdout

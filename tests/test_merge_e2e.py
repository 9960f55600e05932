"""End to end: mask_tissue -> infer_patches -> merge_patches on a small generated slide."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import run_workflow
from synthetic_tissue import tissue_blocks, write_png

pytestmark = pytest.mark.e2e


def test_slide_to_maps_with_overlapping_patches(tmp_path):
    # 1000 x 1300 px at the model's 0.5 µm/px: not a multiple of the stride, with
    # background that the mask drops (coverage 0) and tissue blocks that it keeps.
    rgb, _ = tissue_blocks(1000, 1300, seed=4)
    slide = write_png(tmp_path / "blocks.png", rgb)
    run_workflow(
        tmp_path,
        samples=[{"sample": "cmu", "path": slide, "mpp": 0.5}],
        # Stride below the 256 px output: every band overlaps the next (fold path).
        config={"stages": ["merge"], "inference": {"stride": 192}},
    )
    raw = zarr.open_group(tmp_path / "results" / "cmu" / "infer" / "raw.zarr", mode="r")
    maps = zarr.open_group(tmp_path / "results" / "cmu" / "merge" / "maps.zarr", mode="r")
    height, width = raw.attrs["shape"]
    assert maps.attrs["shape"] == [height, width] and maps.attrs["scale"] == raw.attrs["scale"]
    assert maps.attrs["band_rows"] == 192
    cov = maps["coverage"][...]
    assert cov.shape == (height, width) and cov.dtype == np.uint16

    # Independent check: a naive full-canvas sum/count over the raw patches.
    boxes = raw["boxes"][...]
    count = np.zeros((height, width), np.int64)
    for x0, y0, x1, y1 in boxes:
        count[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)] += 1
    np.testing.assert_array_equal(cov, count)
    assert cov.max() == 4  # 2x2 overlap of 256 px patches at stride 192
    assert (cov == 0).any()  # masked-out background: "no patch here"
    for head in raw.attrs["heads"]:
        name = head["name"]
        values = raw[f"heads/{name}"][...].astype(np.float64)
        total = np.zeros((height, width, head["channels"]))
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            cy1, cx1 = min(y1, height), min(x1, width)
            total[y0:cy1, x0:cx1] += values[i, : cy1 - y0, : cx1 - x0]
        expect = total / np.maximum(count, 1)[..., None]
        merged = maps[name][...]
        assert merged.dtype == np.float32 and merged.shape == (height, width, head["channels"])
        np.testing.assert_allclose(merged, expect, rtol=1e-5, atol=1e-6, err_msg=name)
        assert not merged[cov == 0].any()
    log = (tmp_path / "logs" / "merge_patches" / "cmu.log").read_text()
    assert f"merged {len(boxes)} patches" in log

"""The bytes a slide's stores will take, known from its grid before they are written
(issue 15.4): the sizes match what infer_patches and merge_patches then write, and the
dry run prints them per slide, from the mask once mask_tissue has run."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from conftest import DEMO_SAMPLE, REPO, run_workflow
from histoflow.inference.expected import expected_bytes
from histoflow.inference.grid import covered_pixels, max_overlap
from histoflow.io.maps_zarr import COVERAGE, bytes_per_pixel, open_maps
from histoflow.io.raw_zarr import open_raw
from histoflow.models.card import load_card

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def demo_expected(results, slide, sample=DEMO_SAMPLE):
    card = load_card(CONFIG["model"]["card"])
    return expected_bytes(
        sample, slide, card, CONFIG["inference"], CONFIG["merge"]["encoding"],
        results=str(results),
    )  # fmt: skip


def test_overlap_and_covered_pixels():
    assert max_overlap((164, 164), (164, 164)) == 1
    assert max_overlap((256, 256), (128, 100)) == 2 * 3
    boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10]])
    assert covered_pixels(boxes, (10, 30)) == 300
    assert covered_pixels(boxes, (8, 25)) == 8 * 25  # clipped at the slide edge
    assert covered_pixels(boxes[:0], (8, 25)) == 0


@pytest.mark.e2e
def test_expected_bytes_match_the_written_stores(demo_run, demo_slide, tmp_path):
    results = demo_run / "results"
    found = demo_expected(results, demo_slide)
    assert found.from_mask
    raw = open_raw(results / DEMO_SAMPLE / "infer" / "raw.zarr")
    assert found.patches == len(raw)
    assert found.raw_bytes == sum(array.nbytes for array in raw.heads.values())
    maps = open_maps(results / DEMO_SAMPLE / "merge" / "maps.zarr")
    coverage = np.concatenate([band for _, band in maps.bands(COVERAGE)])
    per_pixel = bytes_per_pixel(maps.attrs["encodings"], raw.channels)
    # The default grid does not overlap: covered pixels are exactly coverage > 0.
    assert found.maps_bytes == int((coverage > 0).sum()) * per_pixel
    # Before mask_tissue has run: the whole slide's grid, an upper bound.
    before = demo_expected(tmp_path / "results", demo_slide)
    assert not before.from_mask
    assert before.patches > found.patches and before.raw_bytes > found.raw_bytes


def expected_rows(output: str) -> dict[str, list[str]]:
    table = output[output.index("expected bytes per slide") :].splitlines()[2:]
    return {line.split()[0]: line.split()[1:] for line in table if line.startswith("  ")}


@pytest.mark.e2e
def test_dry_run_prints_expected_bytes_per_slide(demo_slide, tmp_path):
    samples = [
        {"sample": "A", "path": demo_slide},
        {"sample": "gone", "path": tmp_path / "missing.svs"},
    ]
    dry = run_workflow(tmp_path, samples=samples, args=["-n"])
    rows = expected_rows(dry.stdout)
    assert rows["A"][0] == "<="  # no mask yet: the whole slide's grid
    assert "not estimated" in " ".join(rows["gone"]) and "missing.svs" in " ".join(rows["gone"])
    assert not (tmp_path / "results" / "A" / "mask").exists()  # the dry run wrote nothing
    run_workflow(tmp_path, samples=samples[:1], targets=["results/A/mask/mask.json"])
    rows = expected_rows(run_workflow(tmp_path, samples=samples[:1], args=["-n"]).stdout)
    patches, raw_mb, maps_mb = (float(v) for v in rows["A"])
    found = demo_expected(tmp_path / "results", demo_slide, "A")
    assert found.from_mask
    assert patches == found.patches
    assert raw_mb == pytest.approx(found.raw_bytes / 1e6, abs=0.05)
    assert maps_mb == pytest.approx(found.maps_bytes / 1e6, abs=0.05)
    assert re.search(r"total\s+\d+\s+[\d.]+\s+[\d.]+\s+\(\d+ MB free at 'results'\)", dry.stdout)

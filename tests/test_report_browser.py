"""The cohort report in a real browser (headless Chromium, installed from Debian's
package where missing; skipped with the reason where it cannot be): every picture
loads, sorting and filtering work, and a screenshot is taken and read back. On the
demo run's page and on a cohort of the demo slide and a failed slide."""

from __future__ import annotations

import os

import numpy as np
import pytest
from browser import BrowserUnavailable, find_or_install_chromium, run_check, screenshot
from conftest import REPO
from histoflow.report.build import write_report
from PIL import Image

pytestmark = pytest.mark.e2e

CHECK = (REPO / "tests" / "report_check.js").read_text()
GROUPS = ["Slide", "Tissue", "Inference", "Objects per class", "Time per rule (s)"]


@pytest.fixture(scope="module")
def chrome():
    try:
        return find_or_install_chromium()
    except BrowserUnavailable as exc:
        pytest.skip(f"no headless Chromium here: {exc}")


def check_screenshot(chrome, page, out):
    path, seconds = screenshot(chrome, page, out)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1280, 1600)
        pixels = np.asarray(image.convert("RGB"))
    # Not blank: text, pictures and plots give many colours and contrast.
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    print(f"\nscreenshot {path} ({seconds:.1f} s in chromium)")
    return pixels


def assert_images_load(result, expected_kinds):
    assert set(result["images"]) == {"mask", "heatmap", "objects"}
    for kind in expected_kinds:
        images = result["images"][kind]
        assert images and all(i["ok"] for i in images), (kind, images)
        assert all(max(i["width"], i["height"]) == 200 for i in images), images


def test_demo_page_in_chromium(chrome, demo_run, tmp_path):
    page = demo_run / "results" / "cohort" / "report.html"
    result = run_check(chrome, page, CHECK, tmp_path)
    assert result["ready"] == "ready" and "error" not in result, result
    assert result["cards"] == ["card-demo"] and result["groups"] == GROUPS
    # The demo ran every stage: the mask outline, the heatmap and the objects overlay.
    assert_images_load(result, ["mask", "heatmap", "objects"])
    assert [i["alt"] for i in result["images"]["heatmap"]] == ["demo heatmap"]
    assert len(result["plots"]) == 2 and min(result["plots"]) > 100
    assert result["sortedAsc"] == ["demo"] and result["filtered"] == ["demo"]
    assert result["none"] == [] and "0 of 1 slides" in result["pageinfo"]
    assert int(result["objects"][0]) > 0
    check_screenshot(chrome, page, tmp_path / "demo-report.png")


@pytest.fixture
def ok_and_failed(demo_run, demo_slide, tmp_path):
    """The demo slide's results (linked, read-only) and a slide that failed to open."""
    root = tmp_path / "cohort"
    (root / "results").mkdir(parents=True)
    os.symlink(demo_run / "results" / "demo", root / "results" / "demo")
    os.symlink(demo_run / "benchmarks", root / "benchmarks")
    log = root / "logs" / "mask_tissue" / "broken.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "2026-01-01 10:00:00 ERROR histoflow.mask_tissue: sample 'broken', file "
        "'broken.svs': not a slide OpenSlide or tifffile can open\n"
    )
    (root / "broken.svs").write_bytes(b"not a slide")
    sheet = {"demo": {"path": str(demo_slide)}, "broken": {"path": str(root / "broken.svs")}}
    write_report(sheet, root / "results", root / "logs", root / "benchmarks")
    return root / "results" / "cohort" / "report.html"


def test_ok_and_failed_page_in_chromium(chrome, ok_and_failed, tmp_path):
    result = run_check(chrome, ok_and_failed, CHECK, tmp_path)
    assert result["ready"] == "ready" and "error" not in result, result
    assert result["initial"] == ["broken", "demo"]  # failed first
    assert result["cards"] == ["card-broken", "card-demo"]
    assert "not a slide OpenSlide or tifffile can open" in result["failedTable"]
    assert_images_load(result, ["mask", "heatmap", "objects"])
    assert len(result["images"]["mask"]) == 1  # the failed slide has no picture
    assert result["sortedAsc"] == ["broken", "demo"]
    assert result["sortedDesc"] == ["demo", "broken"]
    assert result["byObjects"] == ["demo", "broken"]  # empty cells sort last
    assert result["objects"][1] == ""
    assert result["filtered"] == ["demo"] and result["filteredCards"] == 1
    assert result["failedOnly"] == ["broken"] and result["none"] == []
    pixels = check_screenshot(chrome, ok_and_failed, tmp_path / "ok-and-failed.png")
    # The failed slide's card is tinted red (#fdf0ef) somewhere on the first screen.
    assert np.any(np.all(pixels == (253, 240, 239), axis=-1))

"""The bad-input matrix: one cohort run with broken samples beside good ones.

Each broken sample must end with one message naming the sample and the file (or
field), and the good samples of the same run must finish (--keep-going).
"""

import json
import shutil

import numpy as np
import pytest
from conftest import run_workflow
from histoflow.synthetic.tissue import tissue_blocks
from histoflow.synthetic.writers import write_png
from PIL import Image
from report_pages import json_block
from test_hostile_inputs import png_bomb

pytestmark = pytest.mark.e2e

# sample -> substring expected in its log (the file path is checked separately).
SLIDE_CASES = {
    "missing": "slide file not found",
    "empty": "slide file is empty (0 bytes)",
    "truncated": "OpenSlide does not recognise it as a .svs slide (truncated or corrupt?)",
    "renamed_png": "no resolution metadata (microns per pixel) in the file; set the 'mpp' column"
    " for this sample in the sample sheet (content is a PNG image, not a .svs slide",
    "no_mpp": "no resolution metadata (microns per pixel) in the file",
    "bad_mask": "user mask aspect ratio",
    "bomb": "image header declares 100000 x 100000 px, more than the 1074 Mpx allowed"
    " (it would be decoded whole); refused as a possible decompression bomb",
    "bomb_mask": "user mask (sheet field 'mask') header declares 100000 x 100000 px",
}
# Samples whose message names their user mask, not their slide.
MASK_CASES = {"bad_mask": "wide_mask.png", "bomb_mask": "bomb_mask.png"}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, demo_slide):
    tmp = tmp_path_factory.mktemp("bad")
    rgb, _ = tissue_blocks(600, 480, seed=3)
    png = write_png(tmp / "roi.png", rgb)
    files = {
        "missing": tmp / "missing.svs",
        "empty": tmp / "empty.svs",
        "truncated": tmp / "truncated.svs",
        "renamed_png": tmp / "renamed_png.svs",
        "no_mpp": png,
        "bad_mask": demo_slide,
        "bomb": png_bomb(tmp / "bomb.png"),
        "bomb_mask": png,
        "blank": tmp / "blank.png",
        "good": demo_slide,
        "png_with_mpp": png,
    }
    files["empty"].write_bytes(b"")
    data = demo_slide.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    shutil.copy(png, files["renamed_png"])
    Image.fromarray(np.full((400, 300, 3), 246, np.uint8)).save(files["blank"])
    Image.fromarray(np.ones((100, 400), np.uint8)).save(tmp / "wide_mask.png")
    png_bomb(tmp / "bomb_mask.png")
    rows = [{"sample": s, "path": p} for s, p in files.items()]
    for row in rows:
        if row["sample"] in ("blank", "png_with_mpp", "bomb", "bomb_mask"):
            row["mpp"] = 0.5
        if row["sample"] in MASK_CASES:
            row["mask"] = tmp / MASK_CASES[row["sample"]]
    proc = run_workflow(tmp, samples=rows, config={"stages": ["mask"]}, check=False)
    return tmp, files, proc


@pytest.mark.parametrize("sample", sorted(SLIDE_CASES))
def test_broken_sample_has_one_clear_message(cohort, sample):
    tmp, files, proc = cohort
    assert proc.returncode != 0
    log = (tmp / "logs" / "mask_tissue" / f"{sample}.log").read_text()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, log
    path = tmp / MASK_CASES[sample] if sample in MASK_CASES else files[sample]
    assert f"sample '{sample}', file '{path}'" in errors[0]
    assert SLIDE_CASES[sample] in errors[0]
    # The same line reaches the Snakemake output the user watches.
    assert f"histoflow error: sample '{sample}'" in proc.stdout
    # Nothing that looks complete is left behind.
    assert not (tmp / "results" / sample / "mask" / "mask.json").exists()


@pytest.mark.parametrize("sample", ["good", "png_with_mpp"])
def test_good_samples_finish(cohort, sample):
    tmp, _, _ = cohort
    meta = json.loads((tmp / "results" / sample / "mask" / "mask.json").read_text())
    assert meta["tissue_fraction"] > 0.1


def test_blank_slide_gives_valid_empty_outputs(cohort):
    tmp, _, _ = cohort
    out = tmp / "results" / "blank" / "mask"
    meta = json.loads((out / "mask.json").read_text())
    assert meta["tissue_fraction"] == 0 and meta["warnings"] == ["no tissue found"]
    assert not np.asarray(Image.open(out / "mask.png")).any()


def test_blank_slide_runs_every_stage_with_empty_outputs(tmp_path):
    import pyarrow.parquet as pq
    import zarr

    Image.fromarray(np.full((700, 600, 3), 246, np.uint8)).save(tmp_path / "blank.png")
    run_workflow(
        tmp_path,
        samples=[{"sample": "blank", "path": tmp_path / "blank.png", "mpp": 0.5}],
        config={"keep": ["raw", "maps"]},
    )
    res = tmp_path / "results" / "blank"
    assert zarr.open_group(str(res / "infer" / "raw.zarr"), mode="r")["boxes"].shape[0] == 0
    maps = zarr.open_group(str(res / "merge" / "maps.zarr"), mode="r")
    assert not maps["coverage"][:].any()
    assert pq.read_table(res / "instances" / "instances.parquet").num_rows == 0
    geojson = json.loads((res / "export" / "blank.geojson").read_text())
    assert geojson["type"] == "FeatureCollection" and geojson["features"] == []
    summary = (res / "export" / "blank.summary.tsv").read_text().splitlines()
    row = dict(zip(summary[0].split("\t"), summary[1].split("\t")))
    assert float(row["tissue_area_mm2"]) == 0 and int(row["objects"]) == 0
    # The cohort page flags it, and says why.
    page = (tmp_path / "results" / "cohort" / "report.html").read_text()
    slide = json_block(page, "report-data")["slides"][0]
    assert slide["status"] == "ok"
    assert [f["id"] for f in slide["flags"]] == ["no_tissue", "mpp_from_sheet"]


def test_sheet_id_snakemake_would_refuse_stops_before_any_job(tmp_path, demo_slide):
    periodic = "S" + "0" * 20
    rows = [{"sample": "good", "path": demo_slide}, {"sample": periodic, "path": demo_slide}]
    proc = run_workflow(tmp_path, samples=rows, config={"stages": ["mask"]}, check=False)
    assert proc.returncode != 0
    expected = f"line 3 (sample '{periodic}'): field 'sample': ID '{periodic}' ends in '0'"
    assert expected in proc.stdout
    assert "PeriodicWildcardError" in proc.stdout and "Traceback" not in proc.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()

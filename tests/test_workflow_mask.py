"""End-to-end Snakemake runs of the mask stage through the workstation profile."""

import json
import subprocess

import pytest
from conftest import REPO, SNAKEMAKE, run_workflow
from histoflow.synthetic.tissue import tissue_blocks
from histoflow.synthetic.writers import write_png
from PIL import Image

pytestmark = pytest.mark.e2e


def test_demo_cohort_mask_outputs(tmp_path, demo_slide):
    run_workflow(
        tmp_path,
        samples=[{"sample": "CMU-1-Small-Region", "path": demo_slide}],
        config={"stages": ["mask"]},
    )
    out = tmp_path / "results" / "CMU-1-Small-Region" / "mask"
    meta = json.loads((out / "mask.json").read_text())
    assert meta["slide_dimensions"] == [2220, 2967]
    assert 0.25 <= meta["tissue_fraction"] <= 0.55
    for name in ("mask.png", "thumbnail.png", "overlay.png"):
        assert Image.open(out / name).size[0] > 0
    assert (tmp_path / "logs" / "mask_tissue" / "CMU-1-Small-Region.log").exists()
    assert (tmp_path / "benchmarks" / "mask_tissue" / "CMU-1-Small-Region.tsv").exists()


def test_bad_samples_fail_clearly_and_others_finish(tmp_path, demo_slide):
    rgb, _ = tissue_blocks(600, 500)
    png = write_png(tmp_path / "roi.png", rgb)
    nompp = write_png(tmp_path / "nompp.png", rgb)
    missing = tmp_path / "gone.svs"
    proc = run_workflow(
        tmp_path,
        samples=[
            {"sample": "good", "path": demo_slide},
            {"sample": "png", "path": png, "mpp": 0.5},
            {"sample": "missing", "path": missing},
            {"sample": "nompp", "path": nompp},
        ],
        config={"stages": ["mask"]},
        check=False,
    )
    assert proc.returncode != 0
    results = tmp_path / "results"
    assert (results / "good" / "mask" / "mask.json").exists()
    assert (results / "png" / "mask" / "mask.json").exists()
    assert not (results / "nompp" / "mask").exists() or not any(
        (results / "nompp" / "mask").iterdir()
    )
    log = (tmp_path / "logs" / "mask_tissue" / "nompp.log").read_text()
    assert f"sample 'nompp', file '{nompp}': no resolution metadata" in log
    # A missing slide is caught by Snakemake before any job runs for it, naming the file.
    assert str(missing) in proc.stdout


def test_bad_config_fails_before_running(tmp_path, demo_slide):
    proc = run_workflow(
        tmp_path,
        samples=[{"sample": "good", "path": demo_slide}],
        config={"mask": {"thumbnail_mpp": 0}},
        check=False,
    )
    assert proc.returncode != 0
    assert "config field 'mask.thumbnail_mpp'" in proc.stdout
    assert not (tmp_path / "results").exists()


def test_bad_sheet_fails_naming_the_row(tmp_path, demo_slide):
    proc = run_workflow(
        tmp_path,
        samples=[{"sample": "a", "path": demo_slide}, {"sample": "a", "path": demo_slide}],
        check=False,
    )
    assert proc.returncode != 0
    assert "duplicate ID 'a' on lines 2 and 3" in proc.stdout


def test_snakemake_lint_passes():
    proc = subprocess.run(
        [str(SNAKEMAKE), "--lint", "--cores", "1"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

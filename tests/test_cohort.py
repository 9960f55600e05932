"""The cohort table: unit tests of histoflow.cohort, and its behaviour in a failed run."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_workflow
from histoflow.cohort import cohort_table, render_html, write_summary
from histoflow.io.instance_table import (
    InstanceTableError,
    Objects,
    build_table,
    write_instance_table,
)
from histoflow.synthetic.raw import write_synthetic_raw
from histoflow.synthetic.tissue import tissue_blocks
from histoflow.synthetic.writers import write_png
from report_pages import json_block

# The classes of the seeded model card, in card order.
CLASSES = [{"name": "Tumour", "color": "#f00"}, {"name": "Stroma", "color": "#0f0"}]


def write_objects(path, class_names):
    """An instance table as extract_instances writes it: one nuclei task, one row per name."""
    n = len(class_names)
    ids = [next(i for i, c in enumerate(CLASSES) if c["name"] == name) for name in class_names]
    corner = np.stack([np.arange(n), np.zeros(n)], axis=1).astype(np.int64)
    objs = Objects(
        class_id=np.array(ids, np.int32),
        probability=np.full(n, 0.9, np.float32),
        centroid=corner[:, ::-1] + 0.5,
        bbox=np.concatenate([corner[:, ::-1], corner[:, ::-1] + 1], axis=1).astype(float),
        area=np.ones(n),
        contour=np.array([b""] * n, dtype=object),
        corner=corner,
    )
    meta = {"model": "test", "slide_mpp": 0.499, "tasks": {"nuclei": CLASSES}}
    write_instance_table(build_table([("nuclei", CLASSES, objs)]), path, meta)


def seed_slide(root, sample, n_patches=None, objects=None, seconds=None):
    """Per-slide files as the stages write them (see workflow/CONTRACTS.md)."""
    out = root / "results" / sample
    (out / "mask").mkdir(parents=True)
    (out / "mask" / "mask.json").write_text(
        json.dumps(
            {
                "slide_dimensions": [2220, 2967],
                "mpp": 0.499,
                "mpp_source": "file",
                "tissue_fraction": 0.378912,
                "tissue_area_mm2": 0.5,
            }
        )
    )
    if n_patches is not None:
        # One row of n_patches 4x4 patches.
        raw = out / "infer" / "raw.zarr"
        write_synthetic_raw(raw, (4, 4 * n_patches), (4, 4), (4, 4), {"p": 1}, sample=sample)
    if objects is not None:
        write_objects(out / "instances" / "instances.parquet", objects)
    for rule, s in (seconds or {}).items():
        (root / "benchmarks" / rule).mkdir(parents=True, exist_ok=True)
        (root / "benchmarks" / rule / f"{sample}.tsv").write_text(f"s\tmax_rss\n{s}\t100\n")
    (out / "manifest.json").write_text("{}")
    return out


def rows_by_sample(header, rows):
    return {row[0]: dict(zip(header, row)) for row in rows}


def test_table_reads_whatever_stages_wrote(tmp_path):
    seed_slide(tmp_path, "mask-only", seconds={"mask_tissue": 2.0, "write_manifest": 0.5})
    seed_slide(
        tmp_path,
        "full",
        n_patches=12,
        objects=["Tumour", "Tumour", "Stroma", "Tumour"],
        seconds={"mask_tissue": 2.0, "infer_patches": 30.25, "export_geojson": 1.0},
    )
    sheet = {"mask-only": {"path": "a.svs"}, "full": {"path": "b.svs"}}
    header, rows = cohort_table(
        sheet, tmp_path / "results", tmp_path / "logs", tmp_path / "benchmarks"
    )
    # Class columns in the model card's order, time columns in pipeline order.
    assert header[-8:] == [
        "density_nuclei_Tumour_per_mm2",
        "objects_nuclei_Stroma",
        "density_nuclei_Stroma_per_mm2",
        "time_mask_tissue_s",
        "time_infer_patches_s",
        "time_export_geojson_s",
        "time_write_manifest_s",
        "time_total_s",
    ]
    by = rows_by_sample(header, rows)
    assert [row[0] for row in rows] == ["mask-only", "full"]  # sheet order
    full = by["full"]
    assert full["status"] == "ok" and full["patches"] == "12"
    assert full["objects"] == "4" and full["objects_per_mm2"] == "8.00"
    assert full["objects_nuclei_Tumour"] == "3" and full["density_nuclei_Tumour_per_mm2"] == "6.00"
    assert full["tissue_fraction"] == "0.3789" and full["slide_mpp"] == "0.4990"
    assert full["time_total_s"] == "33.25" and full["time_write_manifest_s"] == ""
    only = by["mask-only"]
    assert only["patches"] == "" and only["objects"] == "" and only["objects_nuclei_Tumour"] == ""
    assert only["time_total_s"] == "2.50"


def test_failed_and_missing_slides(tmp_path):
    seed_slide(tmp_path, "good")
    log = tmp_path / "logs" / "mask_tissue" / "bad.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "2026-01-01 10:00:00 INFO histoflow.mask_tissue: rule mask_tissue sample bad\n"
        "2026-01-01 10:00:01 ERROR histoflow.mask_tissue: sample 'bad', file 'b.png': "
        "no resolution metadata\n"
    )
    crash = tmp_path / "logs" / "extract_instances" / "crash.log"
    crash.parent.mkdir(parents=True)
    crash.write_text("Traceback (most recent call last):\n  File x\nMemoryError: oh no\n\n")
    sheet = {
        "good": {"path": "g.svs"},
        "bad": {"path": "b.png"},
        "crash": {"path": "c.svs"},
        "gone": {"path": str(tmp_path / "gone.svs")},
        "later": {"path": str(tmp_path / "seed.txt")},
    }
    (tmp_path / "seed.txt").write_text("exists")
    header, rows = cohort_table(
        sheet, tmp_path / "results", tmp_path / "logs", tmp_path / "benchmarks"
    )
    by = rows_by_sample(header, rows)
    assert by["good"]["status"] == "ok" and by["good"]["error"] == ""
    assert by["bad"]["status"] == "failed"
    assert by["bad"]["error"] == "mask_tissue: sample 'bad', file 'b.png': no resolution metadata"
    assert by["crash"]["error"] == "extract_instances: MemoryError: oh no"
    assert by["gone"]["status"] == "failed" and "slide file not found" in by["gone"]["error"]
    assert by["later"]["status"] == "missing"
    page = render_html(header, rows)
    assert '<tr class="failed">' in page and "1 ok, 3 failed, 1 missing" in page
    assert '<th class="time">time_total_s</th>' in page


def test_written_files_parse_back(tmp_path):
    seed_slide(tmp_path, "s1", seconds={"mask_tissue": 1.0})
    tsv, page = tmp_path / "cohort" / "summary.tsv", tmp_path / "cohort" / "summary.html"
    write_summary(
        {"s1": {"path": "x"}},
        tsv,
        page,
        tmp_path / "results",
        tmp_path / "logs",
        tmp_path / "benchmarks",
    )
    with tsv.open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert rows[0]["sample"] == "s1" and rows[0]["time_mask_tissue_s"] == "1.00"
    assert page.read_text().startswith("<!DOCTYPE html>")


@pytest.mark.e2e
def test_failed_slide_is_reported_and_next_run_rebuilds_the_table(tmp_path, demo_slide):
    rgb, _ = tissue_blocks(400, 300)
    nompp = write_png(tmp_path / "nompp.png", rgb)
    samples = [{"sample": "good", "path": demo_slide}, {"sample": "nompp", "path": nompp}]
    proc = run_workflow(
        tmp_path, samples=samples, config={"stages": ["mask", "cohort"]}, check=False
    )
    assert proc.returncode != 0
    summary = tmp_path / "results" / "cohort" / "summary.tsv"
    with summary.open() as fh:
        rows = {row["sample"]: row for row in csv.DictReader(fh, delimiter="\t")}
    assert rows["good"]["status"] == "ok"
    assert rows["nompp"]["status"] == "failed"
    assert "no resolution metadata" in rows["nompp"]["error"]
    assert summary.stat().st_mtime == 0  # so the next run rebuilds it
    # The cohort page too: the failed slide first, with its error and its log.
    page = tmp_path / "results" / "cohort" / "report.html"
    slides = json_block(page.read_text(), "report-data")["slides"]
    assert [(s["sample"], s["status"]) for s in slides] == [("nompp", "failed"), ("good", "ok")]
    assert "no resolution metadata" in slides[0]["error"]
    assert ["log mask_tissue", "../../logs/mask_tissue/nompp.log"] in slides[0]["links"]
    assert page.stat().st_mtime == 0
    multiqc = tmp_path / "results" / "cohort" / "multiqc" / "histoflow_qc_mqc.yaml"
    assert yaml.safe_load(multiqc.read_text())["data"]["nompp"]["status"] == "failed"

    samples[1]["mpp"] = 0.5
    run_workflow(tmp_path, samples=samples, config={"stages": ["mask", "cohort"]})
    with summary.open() as fh:
        rows = {row["sample"]: row for row in csv.DictReader(fh, delimiter="\t")}
    assert [rows[s]["status"] for s in ("good", "nompp")] == ["ok", "ok"]
    assert summary.stat().st_mtime > 0 and page.stat().st_mtime > 0
    slides = json_block(page.read_text(), "report-data")["slides"]
    assert [f["id"] for f in slides[1]["flags"]] == ["mpp_from_sheet"]


@pytest.mark.e2e
def test_reserved_sample_name_is_refused(tmp_path, demo_slide):
    proc = run_workflow(
        tmp_path, samples=[{"sample": "cohort", "path": demo_slide}], check=False, args=["-n"]
    )
    assert proc.returncode != 0
    assert "field 'sample': 'cohort' is reserved" in proc.stdout


def test_only_the_written_metadata_shape_is_read(tmp_path):
    out = seed_slide(tmp_path, "s1", objects=["Tumour"])
    table = out / "instances" / "instances.parquet"
    # {"classes": [...]} per task is not what extract_instances writes: refused by name.
    data = pq.read_table(table)
    meta = {"slide_mpp": 0.499, "tasks": {"nuclei": {"classes": CLASSES}}}
    pq.write_table(data.replace_schema_metadata({"histoflow": json.dumps(meta)}), table)
    with pytest.raises(InstanceTableError, match=r"instances\.parquet.*'tasks'"):
        cohort_table({"s1": {"path": "x"}}, tmp_path / "results", tmp_path / "logs")

"""User text in tables and reports: TSV headers keep their columns, the Snakemake report
never embeds a path as markup, and a failed slide does not stop the report."""

from __future__ import annotations

import csv
import shutil

import export_fixtures as fx
import pytest
from conftest import run_workflow
from histoflow.cohort import cohort_table
from histoflow.export.summary import summarize, write_summary
from histoflow.report_safe import MARKER, decode, encode
from histoflow.synthetic.raw import write_synthetic_raw
from test_cohort import seed_slide

HOSTILE = "x</script><svg onload=alert(1)>&amp;"


@pytest.mark.parametrize(
    "value",
    [
        HOSTILE,
        f"{MARKER}plain",  # a user string that looks encoded survives too
        "100%<done>",
        {"path": HOSTILE, "n": 3, "nested": [HOSTILE, 1.5, None, {"k": "a&b"}]},
        ("a<b", "plain"),
    ],
)
def test_encode_round_trips_and_leaves_no_markup(value):
    encoded = encode(value)
    assert decode(encoded) == value
    assert not set("<>&").intersection(repr(encoded))


def test_plain_text_is_not_touched():
    value = {"path": "data/slide 1.svs", "mask": "", "mpp": 0.5}
    assert encode(value) == value


def test_tab_in_a_class_name_keeps_the_summary_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(fx, "CLASSES", [{"name": "Tu\tmor\n1", "color": "#d62728"}])
    raw = tmp_path / "raw.zarr"
    write_synthetic_raw(raw, (64, 64), (64, 64), (64, 64), {"p": 1})
    row = summarize(
        "S1",
        mask_json=fx.make_mask_json(tmp_path / "mask.json"),
        instances=fx.make_instances(tmp_path / "instances.parquet", n=10),
        maps=raw,
        benchmarks={},
    )
    out = tmp_path / "S1.summary.tsv"
    write_summary(row, out)
    header, values = (line.split("\t") for line in out.read_text().splitlines())
    assert len(header) == len(values)
    with out.open() as fh:
        got = next(csv.DictReader(fh, delimiter="\t"))
    assert int(got["objects_nuclei_Tu mor 1"]) == int(got["objects"]) > 0


def test_tab_in_a_class_name_keeps_the_cohort_columns(tmp_path, monkeypatch):
    import test_cohort

    monkeypatch.setattr(test_cohort, "CLASSES", [{"name": "Tu\tmour", "color": "#f00"}])
    seed_slide(tmp_path, "s1", objects=["Tu\tmour"] * 2)
    header, rows = cohort_table(
        {"s1": {"path": "a.svs"}}, tmp_path / "results", tmp_path / "logs", tmp_path / "b"
    )
    assert "objects_nuclei_Tu mour" in header
    assert not any("\t" in key or "\n" in key for key in header)
    assert len(rows[0]) == len(header)
    assert rows[0][header.index("objects_nuclei_Tu mour")] == "2"


@pytest.mark.e2e
def test_report_escapes_paths_and_survives_a_failed_slide(tmp_path, demo_slide):
    # A slide path that would close the report's <script> element, beside a slide
    # that fails (not an image).
    slide = tmp_path / "slides" / HOSTILE.replace("&amp;", ".svs")
    slide.parent.mkdir(parents=True)
    shutil.copy(demo_slide, slide)
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"not a slide")
    samples = [{"sample": "ok", "path": slide}, {"sample": "broken", "path": broken}]
    config = {"stages": ["mask", "cohort"]}
    proc = run_workflow(tmp_path, samples=samples, config=config, check=False)
    assert proc.returncode != 0
    assert (tmp_path / "results" / "ok" / "mask" / "overlay.png").exists()

    report = tmp_path / "report.html"
    proc = run_workflow(tmp_path, samples=samples, config=config, args=["--report", str(report)])
    assert "left out: broken" in proc.stdout
    page = report.read_text()
    assert "<svg onload" not in page and "</script><svg" not in page
    assert "overlay.png" in page  # the finished slide's QC overlay is in the report
    with (tmp_path / "results" / "cohort" / "summary.tsv").open() as fh:
        status = {row["sample"]: row["status"] for row in csv.DictReader(fh, delimiter="\t")}
    assert status == {"ok": "ok", "broken": "failed"}

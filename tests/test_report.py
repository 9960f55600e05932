"""The cohort report engine (histoflow.report): QC flags, nucleus sizes, plots and the
page of a 20-slide synthetic cohort with a failed and a blank slide."""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import yaml
from histoflow.config import validate_config
from histoflow.errors import ConfigError
from histoflow.io.instance_table import (
    Objects,
    build_table,
    open_instance_table,
    write_instance_table,
)
from histoflow.manifest.decoders import decode_html
from histoflow.paths import MULTIQC_SECTIONS, CohortPaths
from histoflow.report.build import write_report
from histoflow.report.pictures import PictureError
from histoflow.report.plots import density_plot, size_plot
from histoflow.report.qc import FLAGS, cohort_flags, explain
from histoflow.report.settings import ReportSettings
from histoflow.report.sizes import AREA_EDGES_UM2, area_stats
from histoflow.synthetic.cohort import CLASSES, SyntheticCohort, write_synthetic_cohort
from report_pages import decode_picture, read_page

COHORT = SyntheticCohort(
    20, failed=(3,), blank=(7,), sheet_mpp=(5,), large=(9,), dense=(12,), objects_per_mm2=400.0
)


def row(sample, fraction=0.4, density=1000.0, status="ok", size=(1000, 1000), source="file"):
    return {
        "sample": sample,
        "status": status,
        "tissue_fraction": fraction,
        "objects_per_mm2": density,
        "slide_width": size[0],
        "slide_height": size[1],
        "mpp_source": source,
        "slide_mpp": 0.5,
    }


def flag_ids(rows, settings=None):
    settings = settings or ReportSettings()
    return [[f["id"] for f in flags] for flags in cohort_flags(rows, settings)]


def test_flags_compare_with_the_median_of_finished_slides():
    rows = [row(f"s{i}") for i in range(5)]
    rows += [
        row("thin", fraction=0.4 / 3.5),  # below median / 3
        row("edge", fraction=0.4 * 2.9),  # within 3x: no flag
        row("dense", density=3100.0),
        row("empty", fraction=0.0, density=None),
        row("big", size=(2100, 2100)),  # 4.41x the pixels
        row("sheet", source="sheet"),
        # Failed slides take no part in the medians: a huge value changes nothing.
        row("failed", fraction=0.01, density=1e9, status="failed", size=(10**6, 10**6)),
    ]
    ids = dict(zip([r["sample"] for r in rows], flag_ids(rows)))
    assert all(ids[f"s{i}"] == [] for i in range(5))
    assert ids["thin"] == ["tissue_fraction"] and ids["edge"] == []
    assert ids["dense"] == ["density"]
    assert ids["empty"] == ["no_tissue"]  # not also a tissue-fraction outlier
    assert ids["big"] == ["large_slide"] and ids["sheet"] == ["mpp_from_sheet"]
    assert ids["failed"] == ["tissue_fraction", "density", "large_slide"]
    detail = cohort_flags(rows, ReportSettings())[rows.index(rows[7])][0]["detail"]
    assert detail == "density 3100/mm² is 3.1x the cohort median 1000/mm²"


def test_factors_come_from_the_config():
    rows = [row("a"), row("b"), row("c", fraction=0.4 * 2.5)]
    assert flag_ids(rows)[2] == []
    settings = ReportSettings.from_config({"qc": {"tissue_fraction_factor": 2.0}})
    assert flag_ids(rows, settings)[2] == ["tissue_fraction"]
    assert "2x above or below" in explain("tissue_fraction", settings)
    assert "report.qc.tissue_fraction_factor" in explain("tissue_fraction", settings)
    with pytest.raises(ConfigError, match=r"'report'.*colour"):
        ReportSettings.from_config({"colour": 1})


def test_no_ratio_to_a_zero_median():
    rows = [row("a", density=0.0), row("b", density=0.0), row("c", density=5.0)]
    assert flag_ids(rows) == [[], [], []]


def test_area_stats_are_the_objects_areas(tmp_path):
    mpp = 0.25
    um2 = np.array([0.5, 10.0, 20.0, 30.0, 5e4, 40.0])  # first and fifth out of range
    n = len(um2)
    objs = Objects(
        class_id=np.array([0, 0, 0, 1, 1, 1], np.int32),
        probability=np.ones(n, np.float32),
        centroid=np.stack([np.arange(n), np.zeros(n)], axis=1) + 0.5,
        bbox=np.zeros((n, 4)),
        area=um2 / mpp**2,
        contour=np.array([b""] * n, dtype=object),
        corner=np.stack([np.zeros(n), np.arange(n)], axis=1).astype(np.int64),
    )
    path = tmp_path / "instances.parquet"
    write_instance_table(
        build_table([("nuclei", CLASSES, objs)]),
        path,
        {"slide_mpp": mpp, "tasks": {"nuclei": CLASSES}},
    )
    stats, overall = area_stats(open_instance_table(path))
    assert set(stats) == {("nuclei", "Tumour"), ("nuclei", "Stroma")}
    assert stats[("nuclei", "Tumour")]["median"] == pytest.approx(10.0)
    assert stats[("nuclei", "Stroma")]["median"] == pytest.approx(40.0)
    assert overall == pytest.approx(np.median(um2))
    hist = np.array(stats[("nuclei", "Tumour")]["hist"])
    assert hist.sum() == 3 and hist[0] == 1  # 0.5 µm² counted in the first bin
    assert np.array(stats[("nuclei", "Stroma")]["hist"])[-1] == 1
    expected = np.histogram([10.0, 20.0], bins=AREA_EDGES_UM2)[0]
    assert (hist - expected).tolist().count(0) == len(hist) - 1


@pytest.fixture(scope="module")
def cohort20(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort20")
    sheet = write_synthetic_cohort(root, COHORT)
    dirs = (root / "results", root / "logs", root / "benchmarks")
    records = write_report(sheet, *dirs)
    return root, sheet, records


def test_page_of_a_synthetic_cohort(cohort20):
    root, sheet, _ = cohort20
    page, data, _, _ = read_page(CohortPaths(str(root / "results")).report_html)
    slides = data["slides"]
    assert len(slides) == 20
    # Failed first, with its one-line error in the static part of the page.
    assert slides[0]["sample"] == "slide-003" and slides[0]["status"] == "failed"
    assert "no resolution metadata" in slides[0]["error"]
    failed = re.search(r'<table id="failed">(.*?)</table>', page, re.S).group(1)
    assert "slide-003" in failed and "no resolution metadata" in failed
    assert [s["sample"] for s in slides[1:]] == [s for s in sheet if s != "slide-003"]
    flags = {s["sample"]: [f["id"] for f in s["flags"]] for s in slides}
    assert flags["slide-007"] == ["no_tissue"]
    assert flags["slide-005"] == ["mpp_from_sheet"]
    assert flags["slide-009"] == ["large_slide"]
    assert flags["slide-012"] == ["density"]
    assert sum(bool(f) for f in flags.values()) == 4
    for flag in FLAGS:  # every flag explained once
        assert page.count(html.escape(explain(flag, ReportSettings()))) == 1
    # The MultiQC files of the same cohort (their format: tests/test_multiqc.py).
    cohort = CohortPaths(str(root / "results"))
    qc = yaml.safe_load(cohort.multiqc("qc").read_text())["data"]
    assert len(qc) == 20 and qc["slide-003"]["status"] == "failed"
    assert all(cohort.multiqc(section).is_file() for section in MULTIQC_SECTIONS)


def test_pictures_are_resized_and_embedded_once(cohort20):
    root, _, _ = cohort20
    page, data, images, _ = read_page(CohortPaths(str(root / "results")).report_html)
    # 19 slides with a mask picture, 19 with an objects picture (the failed one has none).
    kinds = [kind for s in data["slides"] for kind in s["pics"]]
    assert sorted(set(kinds)) == ["mask", "objects"] and len(kinds) == 38 == len(images)
    for uri in images:
        picture = decode_picture(uri)
        assert max(picture.size) == ReportSettings().thumbnail_px
        assert page.count(uri) == 1
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_table_columns_and_values(cohort20):
    root, _, records = cohort20
    _, data, _, times = read_page(CohortPaths(str(root / "results")).report_html)
    groups = list(dict.fromkeys(c["group"] for c in data["columns"] + times["columns"]))
    assert groups == ["Slide", "Tissue", "Inference", "Objects per class", "Time per rule (s)"]
    assert data["classes"] == ["Tumour", "Stroma", "Lymphocyte"]
    keys = [c["key"] for c in data["columns"]]
    by = {s["sample"]: dict(zip(keys, s["cells"])) for s in data["slides"]}
    record = next(r for r in records if r["sample"] == "slide-000")
    tumour = record["classes"][("nuclei", "Tumour")]
    assert by["slide-000"]["n0"] == tumour
    assert by["slide-000"]["d0"] == round(tumour / record["tissue_area_mm2"], 2)
    assert by["slide-000"]["objects"] == sum(record["classes"].values())
    assert by["slide-007"]["objects"] == 0 and by["slide-003"]["objects"] is None
    assert [c["label"] for c in times["columns"]] == [
        "mask_tissue", "infer_patches", "merge_patches", "extract_instances", "total"
    ]  # fmt: skip
    assert times["cells"][1] == [2.0, 30.0, 5.0, 8.0, 45.0]  # slide-000
    links = dict(next(s for s in data["slides"] if s["sample"] == "slide-000")["links"])
    assert links["mask/overlay.png"] == "../slide-000/mask/overlay.png"
    assert (root / "results" / "cohort" / links["instances/instances.parquet"]).is_file()


def test_reruns_differ_only_in_the_times(cohort20, tmp_path):
    root, sheet, _ = cohort20
    page = CohortPaths(str(root / "results")).report_html
    first = page.read_bytes()
    write_report(sheet, root / "results", root / "logs", root / "benchmarks")
    assert page.read_bytes() == first
    bench = root / "benchmarks" / "mask_tissue" / "slide-000.tsv"
    bench.write_text("s\tmax_rss\n99.5\t100\n")
    copy = tmp_path / "first.html"
    copy.write_bytes(first)
    write_report(sheet, root / "results", root / "logs", root / "benchmarks")
    assert page.read_bytes() != first
    assert decode_html(page) == decode_html(copy)
    bench.write_text("s\tmax_rss\n2.0\t100\n")
    write_report(sheet, root / "results", root / "logs", root / "benchmarks")


def test_plots_are_svg_and_reproducible(cohort20):
    _, _, records = cohort20
    keys = [("nuclei", c["name"]) for c in CLASSES]
    for plot in (density_plot, size_plot):
        svg = plot(records, keys)
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg")
        assert "Lymphocyte" in svg and plot(records, keys) == svg
    empty = [{**r, "classes": {}, "sizes": {}} for r in records]
    assert density_plot(empty, keys) is None and size_plot(empty, keys) is None


def test_user_text_cannot_break_out_of_the_page(tmp_path):
    sheet = write_synthetic_cohort(tmp_path, SyntheticCohort(2, failed=(1,), objects_per_mm2=50.0))
    log = tmp_path / "logs" / "mask_tissue" / "slide-001.log"
    evil = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
    log.write_text(f"2026-01-01 10:00:01 ERROR histoflow.mask_tissue: {evil}\n")
    write_report(sheet, tmp_path / "results", tmp_path / "logs", tmp_path / "benchmarks")
    page, data, _, _ = read_page(CohortPaths(str(tmp_path / "results")).report_html)
    assert data["slides"][0]["error"] == f"mask_tissue: {evil}"  # intact in the JSON
    assert "alert(1)" in page and evil not in page  # escaped everywhere
    assert page.count("<script>") == 1  # the report's own script only


def test_a_broken_picture_names_its_file(tmp_path):
    sheet = write_synthetic_cohort(tmp_path, SyntheticCohort(1, objects_per_mm2=50.0))
    overlay = tmp_path / "results" / "slide-000" / "mask" / "overlay.png"
    overlay.write_bytes(b"not a png")
    with pytest.raises(PictureError, match=r"file '.*slide-000/mask/overlay\.png'"):
        write_report(sheet, tmp_path / "results", tmp_path / "logs", tmp_path / "benchmarks")
    assert not CohortPaths(str(tmp_path / "results")).report_html.exists()


def test_config_section_defaults_and_bad_values():
    config = validate_config({})
    assert ReportSettings.from_config(config["report"]) == ReportSettings()
    with pytest.raises(ConfigError, match=r"config field 'report\.qc\.density_factor'"):
        validate_config({"report": {"qc": {"density_factor": 0.5}}})

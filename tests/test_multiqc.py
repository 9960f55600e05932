"""The MultiQC custom-content files of the cohort stage follow MultiQC's format.

MultiQC is not a histoflow dependency (it pulls some 30 packages into the pinned
environment), so the files are checked against the format its documentation gives
(https://docs.seqera.io/multiqc/custom_content: `id`, `section_name`, `description`,
`plot_type`, `pconfig`/`headers`, `data`, one file per section named `*_mqc.yaml`);
where a `multiqc` command is found (on PATH, or HISTOFLOW_MULTIQC names it) MultiQC
itself parses them too.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess

import jsonschema
import pytest
import yaml
from histoflow.paths import MULTIQC_SECTIONS, CohortPaths
from histoflow.report.build import write_report
from histoflow.synthetic.cohort import SyntheticCohort, write_synthetic_cohort

NUMBER = {"type": "number"}
SCALAR = {"type": ["number", "string"]}
SAMPLE_ROWS = {"type": "object", "additionalProperties": {"type": "object"}}
# The custom-content layout of one section, as documented.
SECTION = {
    "type": "object",
    "required": ["id", "plot_type", "data"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
        "section_name": {"type": "string"},
        "description": {"type": "string"},
        "plot_type": {"enum": ["generalstats", "table", "bargraph", "linegraph", "box"]},
        "pconfig": {"type": "object", "properties": {"id": {"type": "string"}}},
        "headers": {
            "type": "object",
            "additionalProperties": {"type": "object", "required": ["title"]},
        },
        "data": {"type": "object"},
    },
}
# The shape of `data` for each plot type.
DATA = {
    "generalstats": {"type": "object", "additionalProperties": {"additionalProperties": NUMBER}},
    "table": {"type": "object", "additionalProperties": {"additionalProperties": SCALAR}},
    "bargraph": {"type": "object", "additionalProperties": {"additionalProperties": NUMBER}},
    # x -> y per sample; YAML keys are the bin centres (numbers).
    "linegraph": {"type": "object", "additionalProperties": {"type": "object"}},
    "box": {"type": "object", "additionalProperties": {"type": "array", "items": NUMBER}},
}


def check_section(path):
    """Load one file and check it against the documented layout; returns it."""
    assert path.name.endswith("_mqc.yaml"), path  # MultiQC finds custom content by name
    section = yaml.safe_load(path.read_text())
    jsonschema.validate(section, SECTION)
    jsonschema.validate(section["data"], DATA[section["plot_type"]])
    if section["plot_type"] in ("generalstats", "table"):
        used = {col for row in section["data"].values() for col in row}
        assert used <= set(section["headers"]), path  # every column has a header
    if section["plot_type"] == "linegraph":
        for points in section["data"].values():
            assert all(isinstance(x, float) and isinstance(y, float) for x, y in points.items())
    return section


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("mqc")
    spec = SyntheticCohort(6, failed=(1,), blank=(4,), objects_per_mm2=300.0)
    sheet = write_synthetic_cohort(root, spec)
    records = write_report(sheet, root / "results", root / "logs", root / "benchmarks")
    return root, {r["sample"]: r for r in records}


def test_files_follow_the_custom_content_format(cohort):
    root, records = cohort
    paths = CohortPaths(str(root / "results"))
    sections = {s: check_section(paths.multiqc(s)) for s in MULTIQC_SECTIONS}
    assert [s["plot_type"] for s in sections.values()] == [
        "generalstats", "bargraph", "box", "linegraph", "table"
    ]  # fmt: skip
    stats = sections["general_stats"]["data"]
    assert set(stats) == set(records) - {"slide-001"}  # the failed slide has no numbers
    ok = records["slide-000"]
    assert stats["slide-000"]["objects"] == ok["objects"]
    assert stats["slide-000"]["tissue_fraction"] == pytest.approx(ok["tissue_fraction"], abs=1e-4)
    bars = sections["objects"]["data"]
    assert bars["slide-000"] == {k[1]: n for k, n in ok["classes"].items()}
    assert bars["slide-004"] == {"Tumour": 0, "Stroma": 0, "Lymphocyte": 0}  # blank slide
    boxes = sections["density"]["data"]
    assert (
        set(boxes) == {"Tumour", "Stroma", "Lymphocyte"} and len(boxes["Tumour"]) == 4
    )  # no blank
    expected = ok["classes"][("nuclei", "Tumour")] / ok["tissue_area_mm2"]
    assert expected == pytest.approx(boxes["Tumour"][0], abs=1e-3)
    lines = sections["nucleus_area"]["data"]
    assert set(lines) == {"slide-000", "slide-002", "slide-003", "slide-005"}
    assert sum(lines["slide-000"].values()) == pytest.approx(1.0, abs=1e-3)
    qc = sections["qc"]["data"]
    assert qc["slide-001"]["status"] == "failed" and "no resolution" in qc["slide-001"]["error"]
    assert qc["slide-004"]["qc_flags"] == "no tissue"


def multiqc_command() -> str | None:
    return os.environ.get("HISTOFLOW_MULTIQC") or shutil.which("multiqc")


def test_multiqc_reads_the_files(cohort, tmp_path):
    command = multiqc_command()
    if command is None:
        pytest.skip("no multiqc command (set HISTOFLOW_MULTIQC or put multiqc on PATH)")
    root, records = cohort
    source = CohortPaths(str(root / "results")).root / "multiqc"
    proc = subprocess.run(
        [command, str(source), "-o", str(tmp_path), "--no-ansi", "-f"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = tmp_path / "multiqc_data"
    with (data / "multiqc_general_stats.txt").open() as fh:
        rows = {r["Sample"]: r for r in csv.DictReader(fh, delimiter="\t")}
    assert set(rows) == set(records) - {"slide-001"}
    objects = next(k for k in rows["slide-000"] if k.endswith("-objects"))
    assert float(rows["slide-000"][objects]) == records["slide-000"]["objects"]
    for section in ("objects", "density", "nucleus_area", "qc"):
        assert (data / f"multiqc_histoflow_{section}_plot.txt").is_file(), section


@pytest.mark.e2e
def test_demo_files_follow_the_custom_content_format(demo_run):
    paths = CohortPaths(str(demo_run / "results"))
    sections = {s: check_section(paths.multiqc(s)) for s in MULTIQC_SECTIONS}
    assert sections["general_stats"]["data"]["demo"]["objects"] > 0
    assert sections["general_stats"]["data"]["demo"]["patches"] > 0
    assert sections["qc"]["data"]["demo"]["status"] == "ok"

"""Reruns give the same results, and a changed setting reruns only what it affects.

Two cohorts, each run once per module:
- `full_run`: the demo slide through every stage that has rules (found from the
  STAGE_TARGETS registrations in workflow/rules/, so it grows as stages land) with
  the config defaults: the determinism check covers every output format.
- `two_slides`: the demo slide twice, the second with an `mpp` override in the
  sheet, through mask + cohort: a sheet change must rerun only its slide.
"""

from __future__ import annotations

import re

import pytest
from conftest import DEMO_CONFIG, REPO, run_workflow
from histoflow.config import load_schema
from histoflow.manifest import compare_trees

# Files under results/ that two fresh runs write with different bytes (README's list).
RERUN_DIFFERS = {
    "demo/export/demo.summary.tsv",
    "cohort/summary.tsv",
    "cohort/summary.html",
    "cohort/report.html",
}

pytestmark = pytest.mark.e2e


def existing_stages() -> list[str]:
    """Stages with rules, in the schema's order (mask, infer, ..., cohort)."""
    text = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    registered = set(re.findall(r'^STAGE_TARGETS\["(\w+)"\]', text, re.M))
    schema = load_schema("config.schema.yaml")
    order = schema["properties"]["stages"]["items"]["enum"]
    return [stage for stage in order if stage in registered]


def demo(demo_slide) -> list[dict]:
    return [{"sample": "demo", "path": demo_slide}]


def two_slides_sheet(demo_slide, override_mpp: float = 0.5) -> list[dict]:
    return [
        {"sample": "demo", "path": demo_slide},
        {"sample": "demo-mpp", "path": demo_slide, "mpp": override_mpp},
    ]


def planned_jobs(output: str) -> dict[tuple[str, str], str]:
    """(rule, sample) -> reason of every job a dry run lists (sample '' if none)."""
    jobs = {}
    for block in re.split(r"\n\s*\n", output):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if rule:
            sample = re.search(r"wildcards: .*?sample=([^,\s]+)", block)
            reason = re.search(r"reason: (.*)", block)
            key = (rule.group(1), sample.group(1) if sample else "")
            jobs[key] = reason.group(1) if reason else ""
    return jobs


@pytest.fixture(scope="module")
def full_run(demo_run):
    # The shared session run of the demo through the default config (every stage).
    return demo_run


@pytest.fixture(scope="module")
def two_slides(tmp_path_factory, demo_slide):
    workdir = tmp_path_factory.mktemp("two")
    run_workflow(
        workdir, samples=two_slides_sheet(demo_slide), config={"stages": ["mask", "cohort"]}
    )
    return workdir


def test_two_fresh_runs_give_identical_results(full_run, tmp_path, demo_slide):
    run_workflow(tmp_path, samples=demo(demo_slide), config=DEMO_CONFIG)
    verdicts = compare_trees(full_run / "results", tmp_path / "results")
    bad = {path: v for path, v in verdicts.items() if v.startswith(("DIFFERS", "MISSING"))}
    assert not bad, bad
    assert {p for p, v in verdicts.items() if v == "ignored"} == {"demo/run.json"}
    assert verdicts["demo/manifest.json"] == "bytes"
    assert verdicts["demo/mask/mask.png"] == "bytes"
    # Only the tables with wall-time columns (time_*_s) that README lists may differ in
    # bytes (equal once decoded without those columns).
    decoded = {p for p, v in verdicts.items() if v == "decoded"}
    assert decoded <= RERUN_DIFFERS, decoded
    readme = (REPO / "README.md").read_text()
    for path in RERUN_DIFFERS:
        assert f"`{path.replace('demo', '<sample>')}`" in readme, path
    counts = {v: sum(x == v for x in verdicts.values()) for v in sorted(set(verdicts.values()))}
    print(f"\nstages {existing_stages()}: {counts}; decoded: {sorted(decoded)}")


def test_nothing_to_do_after_a_run(full_run, demo_slide):
    proc = run_workflow(full_run, samples=demo(demo_slide), config=DEMO_CONFIG, args=["-n"])
    assert planned_jobs(proc.stdout) == {}, proc.stdout[-2000:]


def test_changed_mask_setting_reruns_mask_and_downstream_only(full_run, demo_slide):
    proc = run_workflow(
        full_run,
        samples=demo(demo_slide),
        config={**DEMO_CONFIG, "mask": {"closing_um": 30.0}},
        args=["-n", "--rerun-triggers", "params"],
    )
    jobs = planned_jobs(proc.stdout)
    assert "Params have changed" in jobs[("mask_tissue", "demo")]
    assert ("write_manifest", "demo") in jobs and ("cohort_summary", "") in jobs
    # Every other job reruns because mask_tissue's outputs change, not for a reason of
    # its own (the manifest's params hold the whole config, so it has both).
    for (rule, _sample), reason in jobs.items():
        if rule not in ("mask_tissue", "write_manifest", "all"):
            assert reason.startswith("Input files updated by another job"), (rule, reason)
    print(f"\nclosing_um changed: {len(jobs)} jobs rerun: {sorted(jobs)}")


def test_changed_sheet_mpp_reruns_that_slide_only(two_slides, demo_slide):
    proc = run_workflow(
        two_slides,
        samples=two_slides_sheet(demo_slide, override_mpp=0.52),
        config={"stages": ["mask", "cohort"]},
        args=["-n", "--rerun-triggers", "params"],
    )
    jobs = planned_jobs(proc.stdout)
    assert "Params have changed" in jobs[("mask_tissue", "demo-mpp")]
    assert ("write_manifest", "demo-mpp") in jobs
    assert {sample for _, sample in jobs} == {"demo-mpp", ""}, jobs
    cohort_jobs = {"cohort_summary", "cohort_report", "all"}
    assert {rule for rule, sample in jobs if not sample} <= cohort_jobs, jobs


def test_report_builds_offline(full_run, demo_slide, monkeypatch):
    # Any attempt to reach the network goes to a closed port and fails.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    proc = run_workflow(
        full_run, samples=demo(demo_slide), config=DEMO_CONFIG, args=["--report", "report.html"]
    )
    report = (full_run / "report.html").read_text()
    assert "results/cohort/summary.html" in report, proc.stdout[-2000:]
    assert "results/demo/mask/overlay.png" in report
    assert "One row per slide of the cohort" in report  # caption of the cohort table
    assert "Tissue mask" in report and "Cohort" in report  # categories
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", report)

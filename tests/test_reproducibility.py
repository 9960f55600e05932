"""Reruns give the same results, and a changed setting reruns only what it affects.

The cohort is the demo slide twice (the second with an `mpp` override in the sheet),
through the stages of the demo config (config/config.yaml; it grows as stages land)
plus `cohort`.
"""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import REPO, run_workflow
from histoflow.manifest import compare_trees

pytestmark = pytest.mark.e2e


def demo_stages() -> list[str]:
    stages = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["stages"]
    return list(dict.fromkeys([*stages, "cohort"]))


def cohort(demo_slide, override_mpp: float = 0.5) -> list[dict]:
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
def first_run(tmp_path_factory, demo_slide):
    workdir = tmp_path_factory.mktemp("run1")
    run_workflow(workdir, samples=cohort(demo_slide), config={"stages": demo_stages()})
    return workdir


def test_two_fresh_runs_give_identical_results(first_run, tmp_path, demo_slide):
    run_workflow(tmp_path, samples=cohort(demo_slide), config={"stages": demo_stages()})
    verdicts = compare_trees(first_run / "results", tmp_path / "results")
    bad = {path: v for path, v in verdicts.items() if v.startswith(("DIFFERS", "MISSING"))}
    assert not bad, bad
    # Only the run records and the cohort table's wall-time columns may differ.
    assert {p for p, v in verdicts.items() if v == "ignored"} == {
        "demo/run.json",
        "demo-mpp/run.json",
    }
    decoded = {p for p, v in verdicts.items() if v == "decoded"}
    assert decoded <= {"cohort/summary.tsv", "cohort/summary.html"}, decoded
    for sample in ("demo", "demo-mpp"):
        assert verdicts[f"{sample}/manifest.json"] == "bytes"
        assert verdicts[f"{sample}/mask/mask.png"] == "bytes"
    print(
        "\ncompared:", {v: sum(x == v for x in verdicts.values()) for v in set(verdicts.values())}
    )
    print("decoded (wall-time columns left out):", sorted(decoded))


def test_nothing_to_do_after_a_run(first_run, demo_slide):
    proc = run_workflow(
        first_run, samples=cohort(demo_slide), config={"stages": demo_stages()}, args=["-n"]
    )
    assert planned_jobs(proc.stdout) == {}, proc.stdout[-2000:]


def test_changed_mask_setting_reruns_mask_and_downstream_only(first_run, demo_slide):
    stages = {"stages": demo_stages()}
    every_job = planned_jobs(
        run_workflow(first_run, samples=cohort(demo_slide), config=stages, args=["-n", "-F"]).stdout
    )
    proc = run_workflow(
        first_run,
        samples=cohort(demo_slide),
        config={**stages, "mask": {"closing_um": 30.0}},
        args=["-n", "--rerun-triggers", "params"],
    )
    jobs = planned_jobs(proc.stdout)
    for sample in ("demo", "demo-mpp"):
        assert "Params have changed" in jobs[("mask_tissue", sample)]
        assert ("write_manifest", sample) in jobs
    assert ("cohort_summary", "") in jobs
    assert set(jobs) <= set(every_job)
    # Everything else reruns only because mask_tissue's outputs change, not on its own.
    for (rule, _sample), reason in jobs.items():
        if rule not in ("mask_tissue", "write_manifest", "all"):
            assert reason.startswith("Input files updated by another job"), (rule, reason)


def test_changed_sheet_mpp_reruns_that_slide_only(first_run, demo_slide):
    proc = run_workflow(
        first_run,
        samples=cohort(demo_slide, override_mpp=0.52),
        config={"stages": demo_stages()},
        args=["-n", "--rerun-triggers", "params"],
    )
    jobs = planned_jobs(proc.stdout)
    assert ("mask_tissue", "demo-mpp") in jobs
    assert ("write_manifest", "demo-mpp") in jobs
    assert {sample for _, sample in jobs} == {"demo-mpp", ""}, jobs
    assert {rule for rule, sample in jobs if not sample} <= {"cohort_summary", "all"}, jobs


def test_report_builds_offline(first_run, demo_slide, monkeypatch):
    # Any attempt to reach the network goes to a closed port and fails.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    proc = run_workflow(
        first_run,
        samples=cohort(demo_slide),
        config={"stages": demo_stages()},
        args=["--report", "report.html"],
    )
    report = (first_run / "report.html").read_text()
    assert "results/cohort/summary.html" in report, proc.stdout[-2000:]
    assert "results/demo-mpp/mask/overlay.png" in report
    assert "One row per slide of the cohort" in report  # caption of the cohort table
    assert "Tissue mask" in report and "Cohort" in report  # categories
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?://", report)

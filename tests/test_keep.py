"""config `keep`: intermediate stores that stay. By default raw.zarr goes once merge has
read it and maps.zarr stays; a later stage then runs alone, and only a missing
maps.zarr brings inference back."""

from __future__ import annotations

import shutil

import pytest
from conftest import run_workflow
from test_reproducibility import demo, planned_jobs

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def merged(tmp_path_factory, demo_slide):
    workdir = tmp_path_factory.mktemp("keep")
    run_workflow(workdir, samples=demo(demo_slide), config={"stages": ["merge"]})
    return workdir


def test_default_keeps_maps_and_removes_raw(merged):
    res = merged / "results" / "demo"
    assert (res / "merge" / "maps.zarr" / "zarr.json").is_file()
    assert not (res / "infer" / "raw.zarr").exists()


def test_later_stage_runs_alone_while_maps_are_there(merged, demo_slide, tmp_path):
    config = {"stages": ["instances"]}
    jobs = planned_jobs(run_workflow(merged, demo(demo_slide), config, args=["-n"]).stdout)
    assert ("extract_instances", "demo") in jobs
    assert ("infer_patches", "demo") not in jobs and ("merge_patches", "demo") not in jobs

    # Without maps.zarr the stores before it come back.
    copy = tmp_path / "copy"
    shutil.copytree(merged, copy, symlinks=True)
    shutil.rmtree(copy / "results" / "demo" / "merge" / "maps.zarr")
    jobs = planned_jobs(run_workflow(copy, demo(demo_slide), config, args=["-n"]).stdout)
    assert ("merge_patches", "demo") in jobs and ("infer_patches", "demo") in jobs


def test_keep_raw_keeps_it(merged, demo_slide, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(merged, copy, symlinks=True)
    shutil.rmtree(copy / "results" / "demo" / "merge" / "maps.zarr")
    run_workflow(copy, demo(demo_slide), {"stages": ["merge"], "keep": ["raw"]})
    res = copy / "results" / "demo"
    assert (res / "infer" / "raw.zarr" / "zarr.json").is_file()
    assert (res / "merge" / "maps.zarr" / "zarr.json").is_file()  # the merge stage's result

"""Threads that follow the job: infer_patches' Snakemake threads (the cores it is given)
become torch's intra-op threads, loader workers are their own setting (auto by device),
and a real run uses what it was given."""

import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_workflow
from histoflow.inference import threads
from histoflow.synthetic.slides import make_nuclei_slide


class FakeWorkflow:
    def __init__(self, **resources):
        self.global_resources = resources


class Resource:  # Snakemake 9 wraps global resources in objects with a value
    def __init__(self, value):
        self.value = value


def test_rule_threads_are_the_cores_shared_among_gpu_slots():
    assert threads.rule_threads({"threads": None}, FakeWorkflow(_cores=8)) == 8
    assert threads.rule_threads({"threads": None}, FakeWorkflow(_cores=8, gpu=2)) == 4
    assert threads.rule_threads({}, FakeWorkflow(_cores=Resource(12), gpu=Resource(4))) == 3
    assert threads.rule_threads({}, FakeWorkflow(_cores=2, gpu=4)) == 1
    # a cluster run has no core count: the profile's set-threads decides, else 8
    assert threads.rule_threads({}, FakeWorkflow(_cores=None)) == threads.CLUSTER_THREADS
    assert threads.rule_threads({"threads": 3}, FakeWorkflow(_cores=16, gpu=1)) == 3


def test_loader_workers_auto_by_device():
    assert threads.loader_workers("auto", 2, "cpu") == 1
    assert threads.loader_workers("auto", 32, "cpu") == 4
    assert threads.loader_workers("auto", 1, "cuda") == 2
    assert threads.loader_workers("auto", 6, "cuda") == 6
    assert threads.loader_workers("auto", 64, "cuda") == threads.MAX_AUTO_WORKERS
    assert threads.loader_workers(0, 16, "cuda") == 0  # a number is taken as given


def test_use_threads_sets_torch():
    before = torch.get_num_threads()
    try:
        assert threads.use_threads(1) == 1 and torch.get_num_threads() == 1
        assert threads.use_threads(0) == 1
    finally:
        torch.set_num_threads(before)


def test_huge_pages_only_before_torch(monkeypatch):
    monkeypatch.delenv(threads.HUGE_PAGES_ENV, raising=False)
    assert "torch" in sys.modules and not threads.prefer_huge_pages()
    code = (
        "import os, sys; sys.path.insert(0, sys.argv[1]); "
        "from histoflow.inference.threads import prefer_huge_pages as p; "
        "print(p(), os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    )
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "workflow")],
        capture_output=True,
        text=True,
        env=env,
    ).stdout.split()
    assert out == ["True", "1"]


@pytest.mark.e2e
def test_infer_job_uses_the_cores_it_is_given(tmp_path):
    slide = tmp_path / "nuclei.tif"
    make_nuclei_slide(slide, width=512, height=512, mpp=0.5, seed=1)
    run_workflow(
        tmp_path / "run",
        samples=[{"sample": "t", "path": slide}],
        config={"stages": ["infer"], "inference": {"device": "cpu"}},
    )  # --cores 2, one GPU slot in the workstation profile
    text = (tmp_path / "run" / "logs" / "infer_patches" / "t.log").read_text()
    assert "torch threads 2, loader workers 1, layout channels_last" in text
    assert "waiting for the loader" in text

"""The demo cohort through profiles/slurm on a real single-node SLURM cluster.

The cluster (tests/slurm/cluster.py) is installed from Debian's packages when missing
and started for this module only; where that cannot happen (not root, no apt-get, a
real SLURM config in /etc/slurm) the test is skipped with the reason.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
import yaml
from conftest import DEMO_CONFIG, DEMO_SAMPLE, REPO, run_workflow
from histoflow.manifest import compare_trees
from slurm.cluster import SlurmCluster, SlurmUnavailable

pytestmark = pytest.mark.e2e

DEMO = DEMO_SAMPLE


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    start = time.monotonic()
    try:
        with SlurmCluster(tmp_path_factory.mktemp("slurm")) as running:
            print(
                f"\nSLURM cluster up in {time.monotonic() - start:.1f} s "
                f"(apt install {running.install_seconds:.1f} s)"
            )
            yield running
    except SlurmUnavailable as exc:
        pytest.skip(f"no SLURM cluster on this machine: {exc}")


def site_profile(path, partition: str):
    """profiles/slurm adapted to a site the way README tells users to: set the partition."""
    cfg = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    cfg["default-resources"]["slurm_partition"] = partition
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def gpus_requested(job_id: str) -> int:
    """GPUs the job asked for: 0 when scontrol shows no GPU request."""
    show = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id],
        capture_output=True,
        text=True,
        timeout=20,
    )
    # An unknown (purged) job must fail the test, not pass it without a field to check.
    assert show.returncode == 0 and f"JobId={job_id}" in show.stdout, show.stderr
    # --gpus=1 shows as TresPerJob=gres:gpu:1 (gres/gpu:1 in newer SLURM) and in
    # ReqTRES as gres/gpu=1; squeue's %b lists only --gres requests.
    fields = dict(re.findall(r"\b(TresPerJob|ReqTRES)=(\S+)", show.stdout))
    found = re.search(r"gres[:/]gpu:(\d+)", fields.get("TresPerJob", "")) or re.search(
        r"gres/gpu=(\d+)", fields.get("ReqTRES", "")
    )
    return int(found.group(1)) if found else 0


def test_fake_gpu_is_scheduled(cluster):
    # The GPU request of infer_patches (gpu: 1 -> --gpus=1) must be satisfiable.
    proc = subprocess.run(
        ["srun", "-p", cluster.partition, "--gpus=1", "printenv", "CUDA_VISIBLE_DEVICES"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0"


def test_demo_cohort_on_slurm_equals_local_run(cluster, tmp_path, demo_slide, request):
    samples = [{"sample": DEMO, "path": demo_slide}]

    profile = site_profile(tmp_path / "profile", cluster.partition)
    start = time.monotonic()
    proc = run_workflow(
        tmp_path / "slurm",
        samples=samples,
        config=DEMO_CONFIG,
        profile=str(profile),
        args=[
            # No slurmdbd here: sacct cannot answer, squeue can (MinJobAge=600).
            "--slurm-status-command",
            "squeue",
            "--slurm-init-seconds-before-status-checks",
            "5",
            "--seconds-between-status-checks",
            "3",
        ],
        timeout=600,
    )
    print(f"\nSLURM run of the demo cohort: {time.monotonic() - start:.1f} s")

    # Every cluster rule's job went through SLURM and finished there.
    submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", proc.stdout)
    assert submitted, proc.stdout[-3000:]
    jobs = {job["id"]: job for job in cluster.jobs()}
    for job_id in submitted:
        assert jobs[job_id]["state"] == "COMPLETED", jobs[job_id]
    rules = {re.match(r"rule_([a-z_]+?)_wildcards", j["comment"]) for j in jobs.values()}
    ran = {m.group(1) for m in rules if m}
    # The demo config runs infer_patches, the one rule that asks for a GPU.
    assert {"mask_tissue", "infer_patches", "write_manifest"} <= ran, jobs
    gpu_jobs = [j["id"] for j in jobs.values() if "rule_infer_patches" in j["comment"]]
    assert gpu_jobs, jobs
    for job_id in gpu_jobs:
        assert gpus_requested(job_id) == 1, job_id

    # The jobs' own logs name their SLURM job (scripts/_common.py).
    slurm_logs = tmp_path / "slurm" / "logs"
    for rule in ("mask_tissue", "write_manifest"):
        text = (slurm_logs / rule / f"{DEMO}.log").read_text()
        found = re.search(r"SLURM job (\d+)", text)
        assert found and found.group(1) in submitted, text

    # Same results as the workstation run: bytes, or decoded content for the cohort table.
    # Requested here, not as an argument: the session-scoped local run would otherwise
    # be built before the module-scoped cluster fixture gets the chance to skip.
    demo_run = request.getfixturevalue("demo_run")
    verdicts = compare_trees(demo_run / "results", tmp_path / "slurm" / "results")
    bad = {path: v for path, v in verdicts.items() if v.startswith(("DIFFERS", "MISSING"))}
    assert not bad, bad
    assert verdicts[f"{DEMO}/manifest.json"] == "bytes"

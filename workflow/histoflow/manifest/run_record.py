"""run.json: what differs on every run of a slide, kept apart from its manifest.

Per-rule wall times and peak memory from `benchmarks/<rule>/<sample>.tsv`, host,
SLURM job id, workflow git commit and the time of writing.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess

from histoflow.manifest.benchmarks import rule_timings

GIT_TIMEOUT_S = 10


def _git(basedir: str | os.PathLike, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-C", str(basedir), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S
    )


def workflow_commit(basedir: str | os.PathLike) -> dict | None:
    """HEAD commit of the workflow checkout and whether tracked files differ from it."""
    try:
        head = _git(basedir, "rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        status = _git(basedir, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def build_run_info(
    sample: str, benchmarks_dir: str | os.PathLike, workflow_dir: str | os.PathLike
) -> dict:
    """The run record of one slide: timings per rule, host, SLURM job, commit, time."""
    timings = rule_timings(benchmarks_dir, sample)
    return {
        "sample": sample,
        "wall_seconds": {rule: t["s"] for rule, t in timings.items()},
        "max_rss_mb": {rule: t["max_rss"] for rule, t in timings.items()},
        "host": platform.node(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "workflow": workflow_commit(workflow_dir),
        "written_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }

"""Shared fixtures: demo data, generated slides, and isolated end-to-end Snakemake runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

DEMO_SLIDE = REPO / "data" / "cmu_small_region.svs"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# The shared demo run: the default config, with the intermediate stores kept and the
# map copies on, so that the tests can read every file the workflow can write.
DEMO_CONFIG = {
    "keep": ["raw", "maps"],
    "export": {
        "formats": [
            "geojson",
            "cells",
            "sqlite",
            "tsv",
            "summary",
            "zarr",
            "hdf5",
            "npz",
            "ometiff",
        ]
    },
}
DEMO_SAMPLE = "demo"

# Whether the running test is marked e2e; `make unit` deselects those, so a Snakemake
# run from an unmarked test would slip into the unit suite. Outside pytest: allowed.
_RUNNING_E2E = {"marked": True}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # Runs before the item's fixtures, so a session fixture built for it sees its mark.
    _RUNNING_E2E["marked"] = item.get_closest_marker("e2e") is not None


@pytest.fixture(scope="session")
def demo_slide() -> Path:
    if not DEMO_SLIDE.exists():
        pytest.fail(f"demo slide missing: run `python scripts/fetch_demo_data.py` ({DEMO_SLIDE})")
    return DEMO_SLIDE


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, demo_slide) -> Path:
    """The demo cohort (one sample, 'demo') through the default config with every store
    kept and every export format on (DEMO_CONFIG), run once per session and shared
    read-only by the tests that check its outputs. Under pytest-xdist the workers share
    one run: the first to ask builds it under a file lock, the others wait and reuse it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        workdir = tmp_path_factory.mktemp("demo-run")
        _run_demo(workdir, demo_slide)
        return workdir
    # Each worker's basetemp is a folder of the session's own temp folder.
    shared = tmp_path_factory.getbasetemp().parent
    workdir, done = shared / "demo-run", shared / "demo-run.done"
    with FileLock(str(shared / "demo-run.lock")):
        if not done.exists():
            shutil.rmtree(workdir, ignore_errors=True)  # a failed attempt's leftovers
            _run_demo(workdir, demo_slide)
            done.touch()
    return workdir


def _run_demo(workdir: Path, demo_slide: Path) -> None:
    run_workflow(workdir, samples=[{"sample": DEMO_SAMPLE, "path": demo_slide}], config=DEMO_CONFIG)


def write_sheet(path: Path, rows: list[dict]) -> Path:
    """Write a sample sheet TSV with the standard columns (empty cells for missing values)."""
    cols = ["sample", "path", "mpp", "mask"]
    extra = [c for r in rows for c in r if c not in cols]
    cols += list(dict.fromkeys(extra))
    lines = ["\t".join(cols)]
    for r in rows:
        lines.append("\t".join("" if r.get(c) is None else str(r[c]) for c in cols))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_workflow(
    workdir: Path,
    samples: list[dict] | None = None,
    config: dict | None = None,
    targets: list[str] | None = None,
    args: list[str] | None = None,
    profile: str | None = "profiles/workstation",
    check: bool = True,
    timeout: int = 900,
) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile in an isolated working directory.

    `config` is merged over config/config.yaml (top-level keys replaced, nested dicts
    updated), written to workdir/config/config.yaml; `samples` becomes the sheet.
    Returns the completed process (stdout+stderr in .stdout); raises on failure
    when `check` is true, with the log tail in the message.
    """
    if not _RUNNING_E2E["marked"]:
        raise RuntimeError("run_workflow from a test without @pytest.mark.e2e (see make unit)")
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in (config or {}).items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    (workdir / "config").mkdir(exist_ok=True)
    if samples is not None:
        write_sheet(workdir / "config" / "samples.tsv", samples)
        cfg["samples"] = "config/samples.tsv"
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # Targets first: `--configfile` takes several values and would swallow them.
    cmd = [str(SNAKEMAKE), *(targets or []), "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    if profile:
        cmd += ["--profile", str(REPO / profile)]
    cmd += ["--cores", "2", "--configfile", str(workdir / "config" / "config.yaml")]
    cmd += list(args or [])
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = _run_group(cmd, workdir, env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def _run_group(cmd: list[str], cwd: Path, env: dict, timeout: int) -> subprocess.CompletedProcess:
    """Run `cmd` in a process group of its own, stdout and stderr in .stdout. On a timeout
    or an interrupt the whole group is killed: killing Snakemake alone leaves its jobs
    running (a hung job outlived the test and the session)."""
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    ) as popen:
        try:
            out, _ = popen.communicate(timeout=timeout)
        except BaseException:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.communicate()
            raise
    return subprocess.CompletedProcess(cmd, popen.returncode, out, "")

"""The repository's own style gates: ruff for Python, snakefmt for Snakemake files."""

import subprocess
import sys
from pathlib import Path

from conftest import REPO

BIN = Path(sys.executable).parent
PY_DIRS = ["workflow", "scripts", "tests", "benchmarks"]


def run(*cmd):
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


def test_ruff_check_clean():
    proc = run(str(BIN / "ruff"), "check", *PY_DIRS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_clean():
    proc = run(str(BIN / "ruff"), "format", "--check", *PY_DIRS)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt_clean():
    proc = run(str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr

"""The repository's style gates: exactly the commands of `make lint` (ruff check, ruff
format --check, snakefmt --check, snakemake --lint), each one a test."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

# The venv running the tests is the one whose tools `make lint` should use.
VENV = Path(sys.executable).parent.parent


def lint_commands() -> list[str]:
    # -n prints the recipe; -o env takes the venv as built, so nothing reinstalls.
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", "env", f"VENV={VENV}", "lint"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in proc.stdout.splitlines() if line.strip()]


def command_id(command: str) -> str:
    tool, first, *_ = shlex.split(command)
    return f"{Path(tool).name} {first}"


COMMANDS = lint_commands()


def test_make_lint_runs_every_gate():
    tools = [command_id(c) for c in COMMANDS]
    assert tools == ["ruff check", "ruff format", "snakefmt --check", "snakemake --lint"]


@pytest.mark.parametrize("command", COMMANDS, ids=command_id)
def test_lint_gate_clean(command):
    proc = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]

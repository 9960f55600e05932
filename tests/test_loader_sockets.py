"""Loader workers under a deep TMPDIR: they hand batches over through AF_UNIX sockets in
the temp folder, whose paths hold 107 bytes; a job folder several levels down made every
worker fail and infer_patches wait for its batches for ever (found by the kill matrix
run under pytest-xdist, whose temp folders are one level deeper)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from histoflow.inference.core import SOCKET_PATH_MAX, SOCKET_SUFFIX

REPO = Path(__file__).resolve().parents[1]

# Two workers, batches of large enough tensors that torch shares them by file descriptor.
CHILD = textwrap.dedent(
    """
    import sys, tempfile
    import numpy as np, torch
    sys.path.insert(0, sys.argv[1])
    from histoflow.inference import core

    class Regions(torch.utils.data.Dataset):
        def __len__(self):
            return 8
        def __getitem__(self, i):
            return np.full((64, 64, 3), i, np.uint8)

    loader = core.make_loader(Regions(), 2, 2, torch.device("cpu"))
    firsts = [int(batch[0, 0, 0, 0]) for batch in loader]
    print("batches", firsts, "tempdir", tempfile.gettempdir())
    """
)


@pytest.fixture
def short_tmp():
    # tmp_path itself can be too deep (pytest-xdist adds a level): a folder right in /tmp.
    folder = Path(tempfile.mkdtemp(prefix="hf-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder)


def deep_folder(root: Path) -> Path:
    folder = root
    while len(str(folder)) + SOCKET_SUFFIX <= SOCKET_PATH_MAX:
        folder = folder / "job-folder-of-a-scheduler"
    folder.mkdir(parents=True)
    return folder


@pytest.mark.parametrize("deep", [False, True])
def test_loader_workers_deliver_every_batch_under_any_tmpdir(short_tmp, deep):
    tmpdir = deep_folder(short_tmp) if deep else short_tmp
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO / "workflow")],
        env={"TMPDIR": str(tmpdir), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batches [0, 2, 4, 6]" in proc.stdout
    used = proc.stdout.split("tempdir ")[1].strip()
    # A short temp folder is kept as it is; a deep one is swapped for a short one.
    assert (used == str(tmpdir)) != deep
    assert len(used) + SOCKET_SUFFIX <= SOCKET_PATH_MAX

"""Resume within a slide: infer_patches killed with SIGKILL part way continues from the
last fully written chunk, and the result equals an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from conftest import REPO
from histoflow.io.raw_zarr import partial_path

# Runs inference in a child process, slowed per batch so it can be killed mid-run.
CHILD = """
import sys, time
sys.path.insert(0, {engine!r})
import torch
from histoflow.inference.runner import InferenceOptions, run
from histoflow.models.card import load_card
from histoflow.models.loader import load_model
card = load_card("builtin:hed_nuclei")
model = load_model(card)
forward = model.forward
calls = []
def slow(x):
    calls.append(len(x))
    time.sleep({delay})
    return forward(x)
model.forward = slow
opts = InferenceOptions.from_config({{"batch_size": 4, "chunk_patches": 8, "dtype": "float32"}})
run({slide!r}, card, model, {out!r}, opts, sample="cmu")
print("patches computed:", sum(calls))
"""


def run_child(slide, out, delay):
    code = CHILD.format(engine=str(REPO / "workflow"), slide=str(slide), out=str(out), delay=delay)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def written(out):
    part = partial_path(out)
    try:
        return int(zarr.open_group(str(part), mode="r").attrs.get("written", 0))
    except Exception:
        return 0


@pytest.mark.parametrize("kill_after_chunks", [2])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, demo_slide, kill_after_chunks):
    ref = tmp_path / "ref.zarr"
    assert run_child(demo_slide, ref, 0).wait(timeout=300) == 0
    out = tmp_path / "raw.zarr"
    proc = run_child(demo_slide, out, 0.3)
    deadline = time.time() + 240
    while written(out) < 8 * kill_after_chunks and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = written(out)
    assert done >= 8 * kill_after_chunks
    assert not out.exists()  # nothing that looks complete
    total = zarr.open_group(str(ref), mode="r")["boxes"].shape[0]
    assert done < total
    rerun = run_child(demo_slide, out, 0)
    stdout, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0
    # The rerun computed only the patches that were not safely on disk.
    assert f"patches computed: {total - done}" in stdout
    assert not partial_path(out).exists()
    a, b = zarr.open_group(str(ref), mode="r"), zarr.open_group(str(out), mode="r")
    assert np.array_equal(a["boxes"][:], b["boxes"][:])
    for head in a["heads"].array_keys():
        assert np.array_equal(a["heads"][head][:], b["heads"][head][:])


def test_changed_settings_discard_partial(tmp_path):
    from histoflow.io.raw_zarr import RawZarrWriter

    boxes = np.array([[0, 0, 4, 4], [4, 0, 8, 4]])
    heads = [{"name": "p", "channels": 1}]
    w = RawZarrWriter(
        tmp_path / "r.zarr", boxes, boxes[:, :2], heads, (4, 4), {"a": 1}, chunk_patches=1
    )
    w.append({"p": np.ones((1, 4, 4, 1), np.float16)})
    assert w.written == 1
    same = RawZarrWriter(
        tmp_path / "r.zarr", boxes, boxes[:, :2], heads, (4, 4), {"a": 1}, chunk_patches=1
    )
    assert same.written == 1
    other = RawZarrWriter(
        tmp_path / "r.zarr", boxes, boxes[:, :2], heads, (4, 4), {"a": 2}, chunk_patches=1
    )
    assert other.written == 0


def test_background_writer_same_bytes_and_errors_surface(tmp_path):
    from histoflow.io.raw_zarr import RawZarrWriter

    rng = np.random.default_rng(0)
    boxes = np.array([[4 * i, 0, 4 * i + 4, 4] for i in range(11)])
    heads = [{"name": "p", "channels": 2}]
    data = rng.random((11, 4, 4, 2)).astype(np.float16)
    stores = []
    for background in (False, True):
        w = RawZarrWriter(
            tmp_path / f"{background}.zarr",
            boxes,
            boxes[:, :2],
            heads,
            (4, 4),
            {"a": 1},
            chunk_patches=3,
            background=background,
        )
        for i in range(0, 11, 4):  # batches of 4 across chunks of 3
            w.append({"p": data[i : i + 4]})
        stores.append(w.close())
    a, b = ({f.relative_to(s): f.read_bytes() for f in s.rglob("*") if f.is_file()} for s in stores)
    assert a == b
    assert np.array_equal(zarr.open_group(str(stores[1]), mode="r")["heads"]["p"][:], data)
    # Batches that do not fit the store are refused (zarr itself would crop them).
    w = RawZarrWriter(tmp_path / "x.zarr", boxes, boxes[:, :2], heads, (4, 4), {})
    with pytest.raises(ValueError, match="head 'p' patches have shape"):
        w.append({"p": np.zeros((3, 5, 5, 2), np.float16)})
    with pytest.raises(ValueError, match="more patches than the 11 boxes"):
        w.append({"p": np.zeros((12, 4, 4, 2), np.float16)})
    # A write that fails in the thread (a full disk, say) is raised in the caller, and
    # nothing is published.
    w = RawZarrWriter(
        tmp_path / "bad.zarr",
        boxes,
        boxes[:, :2],
        heads,
        (4, 4),
        {},
        chunk_patches=3,
        background=True,
    )

    class FullDisk:
        shape = w.arrays["p"].shape

        def __setitem__(self, key, value):
            raise OSError(28, "No space left on device")

    w.arrays["p"] = FullDisk()
    with pytest.raises(OSError, match="No space left"):
        for i in range(0, 11, 4):
            w.append({"p": data[i : i + 4]})
        w.close()
    w.abort()
    assert not (tmp_path / "bad.zarr").exists()

"""A resume never mixes slides: the slide's identity (size, mtime, content hash) is in
raw.zarr's partial-store fingerprint and in the rules' rerun triggers, so a replaced
slide (even one restored with an older mtime, `cp -p`) starts afresh and reruns."""

import importlib
import logging
import os
import shutil

import numpy as np
import pytest
import zarr
from conftest import run_workflow
from histoflow.io.raw_zarr import partial_path
from histoflow.synthetic.tissue import tissue_blocks
from histoflow.synthetic.writers import write_slide

MPP = 0.5
fp = importlib.import_module("histoflow.manifest.fingerprint")


def make_slide(path, seed):
    rgb, _ = tissue_blocks(512, 512, seed=seed)
    if seed % 2:
        rgb = np.ascontiguousarray(rgb[::-1, ::-1])  # other pixels, same size
    return write_slide(path, rgb, MPP)


def replace_file(src, dst, keep_mtime: bool):
    """Put `src`'s bytes at `dst`; with `keep_mtime`, `dst` keeps its old mtime (or an
    older one), as a restored backup would."""
    old = os.stat(dst)
    shutil.copyfile(src, dst)
    if keep_mtime:
        os.utime(dst, ns=(old.st_atime_ns, old.st_mtime_ns - 10**9))


def infer(slide, out, fail_after=None):
    from histoflow.inference.runner import InferenceOptions, run
    from histoflow.models.card import load_card
    from histoflow.models.loader import load_model

    card = load_card("builtin:hed_nuclei")
    model = load_model(card)
    forward, calls = model.forward, []

    def counted(x):
        calls.append(len(x))
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt("killed part way")
        return forward(x)

    model.forward = counted
    opts = InferenceOptions.from_config(
        {
            "batch_size": 1,
            "chunk_patches": 1,
            "dtype": "float32",
            "num_workers": 0,
            "device": "cpu",
            "stride": 256,
        }
    )
    run(str(slide), card, model, str(out), opts, sample="s")
    return sum(calls)


def heads(path):
    group = zarr.open_group(str(path), mode="r")
    return {k: group["heads"][k][:] for k in group["heads"].array_keys()}


def test_identity_tells_replaced_files_apart(tmp_path, monkeypatch):
    a, b = make_slide(tmp_path / "a.tif", 0), make_slide(tmp_path / "b.tif", 1)
    first = fp.identity(a)
    assert fp.identity(a) == first  # stable
    assert first["method"] == "sha256"  # small files are hashed in full
    replace_file(b, a, keep_mtime=True)
    assert fp.identity(a)["sha256"] != first["sha256"]
    assert fp.identity(a) != first
    # Above the limit: size and both ends, and the mtime.
    monkeypatch.setattr(fp, "FULL_HASH_LIMIT", 16)
    big = fp.identity(a)
    assert big["method"] == "fast"
    os.utime(a, ns=(0, 10**9))
    assert fp.identity(a)["mtime_ns"] == 10**9 and fp.identity(a) != big
    assert fp.identity(None) is None


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["newer", "older-mtime"])
def test_partial_store_of_a_replaced_slide_is_not_resumed(tmp_path, caplog, keep_mtime):
    slide = make_slide(tmp_path / "slide.tif", 0)
    other = make_slide(tmp_path / "other.tif", 1)
    out = tmp_path / "raw.zarr"
    with pytest.raises(KeyboardInterrupt):
        infer(slide, out, fail_after=2)
    assert int(zarr.open_group(str(partial_path(out)), mode="r").attrs["written"]) >= 1
    replace_file(other, slide, keep_mtime)
    caplog.set_level(logging.INFO)
    computed = infer(slide, out)
    assert "resuming" not in caplog.text
    assert "discarding partial" in caplog.text
    ref = tmp_path / "ref.zarr"
    assert infer(other, ref) == computed  # every patch computed again
    a, b = heads(out), heads(ref)
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name])


def test_same_slide_still_resumes(tmp_path, caplog):
    slide = make_slide(tmp_path / "slide.tif", 0)
    out = tmp_path / "raw.zarr"
    with pytest.raises(KeyboardInterrupt):
        infer(slide, out, fail_after=2)
    caplog.set_level(logging.INFO)
    infer(slide, out)
    assert "resuming" in caplog.text


@pytest.mark.e2e
def test_replaced_slide_with_older_mtime_reruns_its_stages(tmp_path):
    from PIL import Image

    slide = make_slide(tmp_path / "slide.tif", 0)
    other = make_slide(tmp_path / "other.tif", 1)
    mask, other_mask = tmp_path / "mask.png", tmp_path / "other-mask.png"
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    Image.fromarray(left).save(mask)
    Image.fromarray(255 - left).save(other_mask)
    samples = [{"sample": "s", "path": slide, "mpp": MPP, "mask": mask}]
    config = {"stages": ["mask"]}
    run_workflow(tmp_path, samples=samples, config=config)
    thumb = tmp_path / "results" / "s" / "mask" / "thumbnail.png"
    before = thumb.read_bytes()
    unchanged = run_workflow(tmp_path, samples=samples, config=config, args=["-n"])
    assert "Nothing to be done" in unchanged.stdout  # the identity is stable
    replace_file(other, slide, keep_mtime=True)
    assert os.stat(slide).st_mtime < os.stat(thumb).st_mtime
    proc = run_workflow(tmp_path, samples=samples, config=config)
    assert "mask_tissue" in proc.stdout
    assert thumb.read_bytes() != before
    # The same for the user mask.
    mask_png = tmp_path / "results" / "s" / "mask" / "mask.png"
    before = mask_png.read_bytes()
    replace_file(other_mask, mask, keep_mtime=True)
    proc = run_workflow(tmp_path, samples=samples, config=config)
    assert "mask_tissue" in proc.stdout
    assert mask_png.read_bytes() != before


def test_complete_store_does_not_depend_on_slide_path_or_mtime(tmp_path):
    slide = make_slide(tmp_path / "slide.tif", 0)
    copy = tmp_path / "elsewhere" / "copy.tif"
    copy.parent.mkdir()
    shutil.copyfile(slide, copy)
    os.utime(copy, ns=(0, 10**9))
    a, b = tmp_path / "a" / "raw.zarr", tmp_path / "b" / "raw.zarr"
    infer(slide, a)
    infer(copy, b)
    attrs_a = dict(zarr.open_group(str(a), mode="r").attrs)
    assert "resume_key" not in attrs_a
    assert attrs_a == dict(zarr.open_group(str(b), mode="r").attrs)


@pytest.mark.e2e
def test_replaced_model_file_with_older_mtime_reruns_inference(tmp_path):
    import torch
    from test_infer import TinyNet, write_tiny_card

    slide = make_slide(tmp_path / "slide.tif", 0)
    model = tmp_path / "tiny.pt"
    torch.jit.script(TinyNet().eval()).save(str(model))
    other = TinyNet().eval()
    with torch.no_grad():
        other.cls.bias += 1.0  # other weights, same architecture and file size
    torch.jit.script(other).save(str(tmp_path / "other.pt"))
    samples = [{"sample": "s", "path": slide, "mpp": MPP}]
    config = {
        "stages": ["infer"],
        "model": {"card": write_tiny_card(tmp_path, {"torchscript": "tiny.pt"})},
        "inference": {"dtype": "float32", "batch_size": 64},
    }
    run_workflow(tmp_path / "run", samples=samples, config=config)
    raw = tmp_path / "run" / "results" / "s" / "infer" / "raw.zarr"
    before = zarr.open_group(str(raw), mode="r").attrs["weights_sha256"]
    replace_file(tmp_path / "other.pt", model, keep_mtime=True)
    proc = run_workflow(tmp_path / "run", samples=samples, config=config)
    assert "infer_patches" in proc.stdout
    assert zarr.open_group(str(raw), mode="r").attrs["weights_sha256"] != before


def test_identity_never_reads_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    record = fp.identity(fifo)  # returns at once: a FIFO is never opened
    assert record.keys() == {"path", "mode"} and record["mode"].startswith("p")
    assert fp.identity(tmp_path)["mode"].startswith("d")

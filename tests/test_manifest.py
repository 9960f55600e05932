"""Unit tests of histoflow.manifest: fingerprints, provenance, run records, comparisons."""

from __future__ import annotations

import hashlib
import json
import time

import h5py
import numpy as np
import pytest
import zarr
from histoflow import manifest as mf


def test_sha256_and_fast_fingerprints(tmp_path):
    data = np.random.default_rng(0).bytes(3 << 20)
    path = tmp_path / "slide.svs"
    path.write_bytes(data)
    full = mf.fingerprint(path)
    assert full == {
        "path": str(path),
        "bytes": len(data),
        "method": "sha256",
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    fast = mf.fingerprint(path, "fast")
    assert fast["sha256"] != full["sha256"] and fast["bytes"] == len(data)
    # The fast fingerprint sees the ends and the size, not the middle.
    middle = bytearray(data)
    middle[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(middle))
    assert mf.fingerprint(path, "fast")["sha256"] == fast["sha256"]
    assert mf.fingerprint(path)["sha256"] != full["sha256"]
    path.write_bytes(data[:-1])
    assert mf.fingerprint(path, "fast")["sha256"] != fast["sha256"]
    with pytest.raises(ValueError, match="unknown fingerprint method 'md5'"):
        mf.fingerprint(path, "md5")
    assert mf.fingerprint(None) is None


def test_mirax_companion_folder_is_fingerprinted(tmp_path):
    (tmp_path / "slide.mrxs").write_text("index")
    (tmp_path / "slide").mkdir()
    dat = tmp_path / "slide" / "Data0000.dat"
    dat.write_bytes(b"pixels")
    before = mf.fingerprint(tmp_path / "slide.mrxs")["companion"]
    assert before["bytes"] == 6
    dat.write_bytes(b"pixelz")
    assert mf.fingerprint(tmp_path / "slide.mrxs")["companion"]["sha256"] != before["sha256"]


def make_sample_dir(root, with_model=True):
    sample = root / "results" / "s1"
    (sample / "mask").mkdir(parents=True)
    (sample / "mask" / "mask.json").write_text(
        json.dumps({"slide_dimensions": [100, 80], "mpp": 0.5, "mpp_source": "file"})
    )
    (sample / "mask" / ".overlay.png.tmp-1").write_text("half-written")
    if with_model:
        group = zarr.open_group(str(sample / "infer" / "raw.zarr"), mode="w")
        group.attrs.update(
            {
                "model": {"name": "builtin:test", "heads": [{"name": "p", "channels": 1}]},
                "weights_sha256": "ab" * 32,
                "mpp": 0.5,
                "versions": {"torch": "2.13.0"},
            }
        )
        group.create_array("boxes", shape=(3, 4), dtype="int64")
    return sample


def test_model_provenance_read_from_store_attributes(tmp_path):
    sample = make_sample_dir(tmp_path)
    model = mf.model_provenance(sample)
    assert model["source"] == "infer/raw.zarr"
    assert model["card"]["name"] == "builtin:test"
    assert model["weights_sha256"] == "ab" * 32
    assert model["versions"] == {"torch": "2.13.0"}
    assert mf.model_provenance(make_sample_dir(tmp_path / "b", with_model=False)) is None


def test_outputs_listed_with_stores_as_one_entry(tmp_path):
    sample = make_sample_dir(tmp_path)
    (sample / "manifest.json").write_text("{}")
    (sample / "run.json").write_text("{}")
    assert mf.list_outputs(sample) == ["infer/raw.zarr/", "mask/mask.json"]


def test_manifest_is_deterministic_and_holds_no_run_facts(tmp_path):
    sample = make_sample_dir(tmp_path)
    slide = tmp_path / "slide.svs"
    slide.write_bytes(b"slide bytes")
    row = {"path": str(slide), "mpp": None, "mask": None}
    config = {"stages": ["mask", "cohort"], "mask": {"closing_um": 24.0}}
    first, second = tmp_path / "m1.json", tmp_path / "m2.json"
    mf.write_json(mf.build_manifest("s1", row, config, sample), first)
    time.sleep(0.01)
    mf.write_json(mf.build_manifest("s1", row, config, sample), second)
    assert first.read_bytes() == second.read_bytes()
    data = json.loads(first.read_text())
    assert data["input"]["slide"]["sha256"] == hashlib.sha256(b"slide bytes").hexdigest()
    assert data["config"] == config and data["sheet"] == row
    assert data["model"]["weights_sha256"] == "ab" * 32
    assert data["slide"]["mpp_source"] == "file"
    assert data["software"]["numpy"] == np.__version__
    text = first.read_text()
    for run_fact in ("written_at", "host", "slurm", "wall"):
        assert run_fact not in text


def test_run_record_reads_benchmarks(tmp_path, monkeypatch):
    bench = tmp_path / "benchmarks"
    for rule, seconds in (("mask_tissue", "2.5"), ("infer_patches", "10.0")):
        (bench / rule).mkdir(parents=True)
        (bench / rule / "s1.tsv").write_text(
            "s\th:m:s\tmax_rss\tmax_vms\n" + f"{seconds}\t0:00:02\t250.5\t900\n"
        )
    (bench / "mask_tissue" / "s10.tsv").write_text("s\n99\n")  # another sample
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    run = mf.build_run_info("s1", bench, tmp_path)
    assert run["wall_seconds"] == {"infer_patches": 10.0, "mask_tissue": 2.5}
    assert run["max_rss_mb"]["mask_tissue"] == 250.5
    assert run["slurm_job_id"] == "4242"
    assert run["workflow"] is None  # not a git checkout
    assert mf.read_benchmark(bench / "mask_tissue" / "s10.tsv") == {"s": 99.0, "max_rss": None}


def write_h5(path, values):
    with h5py.File(path, "w", track_order=True) as fh:
        fh.create_dataset("maps/p", data=values, track_times=True)
        fh.attrs["mpp"] = 0.5


def test_compare_trees_verdicts(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "s1").mkdir(parents=True)
        (root / "cohort").mkdir()
        (root / "s1" / "mask.png").write_bytes(b"png")
    (a / "s1" / "run.json").write_text('{"wall": 1}')
    (b / "s1" / "run.json").write_text('{"wall": 2}')
    header = "sample\ttissue_area_mm2\ttime_mask_tissue_s\ttime_total_s\n"
    (a / "cohort" / "summary.tsv").write_text(header + "s1\t0.6214\t2.93\t2.93\n")
    (b / "cohort" / "summary.tsv").write_text(header + "s1\t0.6214\t3.10\t3.10\n")
    # HDF5 stores object modification times: same data written a second later differs.
    values = np.arange(12, dtype="float32").reshape(3, 4)
    write_h5(a / "s1" / "maps.h5", values)
    time.sleep(1.1)
    write_h5(b / "s1" / "maps.h5", values)
    (a / "s1" / "extra.txt").write_text("only here")
    (a / "s1" / "table.csv").write_text("x\n1\n")
    (b / "s1" / "table.csv").write_text("x\n2\n")
    verdicts = mf.compare_trees(a, b)
    assert verdicts["s1/mask.png"] == "bytes"
    assert verdicts["s1/run.json"] == "ignored"
    assert verdicts["cohort/summary.tsv"] == "decoded"
    assert verdicts["s1/maps.h5"] == "decoded"
    assert verdicts["s1/extra.txt"] == "MISSING in second"
    assert verdicts["s1/table.csv"].startswith("DIFFERS (bytes")
    # A changed value (not a wall time) in the cohort table is a difference.
    (b / "cohort" / "summary.tsv").write_text(header + "s1\t0.6300\t3.10\t3.10\n")
    write_h5(b / "s1" / "maps.h5", values + 1)
    verdicts = mf.compare_trees(a, b)
    assert verdicts["cohort/summary.tsv"] == "DIFFERS (decoded content)"
    assert verdicts["s1/maps.h5"] == "DIFFERS (decoded content)"


def test_compare_cli_exit_status(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.json").write_text("1")
    (tmp_path / "b" / "x.json").write_text("1")
    assert mf.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    (tmp_path / "b" / "x.json").write_text("2")
    assert mf.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "DIFFERS" in capsys.readouterr().out

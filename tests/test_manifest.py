"""Unit tests of histoflow.manifest: fingerprints, provenance, run records, comparisons."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import zarr
from conftest import REPO
from histoflow.manifest.benchmarks import BenchmarkError, read_benchmark, rule_timings
from histoflow.manifest.compare import compare_trees, main
from histoflow.manifest.fingerprint import fingerprint
from histoflow.manifest.provenance import build_manifest, list_outputs, model_provenance, write_json
from histoflow.manifest.run_record import build_run_info
from histoflow.manifest.sheet import sheet_record


def test_sha256_and_fast_fingerprints(tmp_path):
    data = np.random.default_rng(0).bytes(3 << 20)
    path = tmp_path / "slide.svs"
    path.write_bytes(data)
    full = fingerprint(path)
    assert full == {
        "path": str(path),
        "bytes": len(data),
        "method": "sha256",
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    fast = fingerprint(path, "fast")
    assert fast["sha256"] != full["sha256"] and fast["bytes"] == len(data)
    # The fast fingerprint sees the ends and the size, not the middle.
    middle = bytearray(data)
    middle[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(middle))
    assert fingerprint(path, "fast")["sha256"] == fast["sha256"]
    assert fingerprint(path)["sha256"] != full["sha256"]
    path.write_bytes(data[:-1])
    assert fingerprint(path, "fast")["sha256"] != fast["sha256"]
    with pytest.raises(ValueError, match="unknown fingerprint method 'md5'"):
        fingerprint(path, "md5")
    assert fingerprint(None) is None


def test_mirax_companion_folder_is_fingerprinted(tmp_path):
    (tmp_path / "slide.mrxs").write_text("index")
    (tmp_path / "slide").mkdir()
    dat = tmp_path / "slide" / "Data0000.dat"
    dat.write_bytes(b"pixels")
    before = fingerprint(tmp_path / "slide.mrxs")["companion"]
    assert before["bytes"] == 6
    dat.write_bytes(b"pixelz")
    assert fingerprint(tmp_path / "slide.mrxs")["companion"]["sha256"] != before["sha256"]


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
    model = model_provenance(sample)
    assert model["source"] == "infer/raw.zarr"
    assert model["card"]["name"] == "builtin:test"
    assert model["weights_sha256"] == "ab" * 32
    assert model["versions"] == {"torch": "2.13.0"}
    assert model_provenance(make_sample_dir(tmp_path / "b", with_model=False)) is None


def test_outputs_listed_with_stores_as_one_entry(tmp_path):
    sample = make_sample_dir(tmp_path)
    (sample / "manifest.json").write_text("{}")
    (sample / "run.json").write_text("{}")
    assert list_outputs(sample) == ["infer/raw.zarr/", "mask/mask.json"]


def test_manifest_is_deterministic_and_holds_no_run_facts(tmp_path):
    sample = make_sample_dir(tmp_path)
    slide = tmp_path / "slide.svs"
    slide.write_bytes(b"slide bytes")
    row = {"path": str(slide), "mpp": None, "mask": None}
    config = {"stages": ["mask", "cohort"], "mask": {"closing_um": 24.0}}
    first, second = tmp_path / "m1.json", tmp_path / "m2.json"
    write_json(build_manifest("s1", row, config, sample), first)
    # Other file times on the second build: the manifest must not record any.
    for path in (slide, *sample.rglob("*")):
        os.utime(path, (1_000_000, 1_000_000))
    write_json(build_manifest("s1", row, config, sample), second)
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
    run = build_run_info("s1", bench, tmp_path)
    assert run["wall_seconds"] == {"infer_patches": 10.0, "mask_tissue": 2.5}
    assert run["max_rss_mb"]["mask_tissue"] == 250.5
    assert run["slurm_job_id"] == "4242"
    assert run["workflow"] is None  # not a git checkout
    assert read_benchmark(bench / "mask_tissue" / "s10.tsv") == {"s": 99.0, "max_rss": None}


def write_h5(path, values, track_times=True):
    with h5py.File(path, "w", track_order=True) as fh:
        fh.create_dataset("maps/p", data=values, track_times=track_times)
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
    # HDF5 object headers may hold modification times: the same data with and without
    # one differs in bytes, not in content.
    values = np.arange(12, dtype="float32").reshape(3, 4)
    write_h5(a / "s1" / "maps.h5", values)
    write_h5(b / "s1" / "maps.h5", values, track_times=False)
    assert (a / "s1" / "maps.h5").read_bytes() != (b / "s1" / "maps.h5").read_bytes()
    (a / "s1" / "extra.txt").write_text("only here")
    (a / "s1" / "table.csv").write_text("x\n1\n")
    (b / "s1" / "table.csv").write_text("x\n2\n")
    verdicts = compare_trees(a, b)
    assert verdicts["s1/mask.png"] == "bytes"
    assert verdicts["s1/run.json"] == "ignored"
    assert verdicts["cohort/summary.tsv"] == "decoded"
    assert verdicts["s1/maps.h5"] == "decoded"
    assert verdicts["s1/extra.txt"] == "MISSING in second"
    assert verdicts["s1/table.csv"].startswith("DIFFERS (bytes")
    # A changed value (not a wall time) in the cohort table is a difference.
    (b / "cohort" / "summary.tsv").write_text(header + "s1\t0.6300\t3.10\t3.10\n")
    write_h5(b / "s1" / "maps.h5", values + 1)
    verdicts = compare_trees(a, b)
    assert verdicts["cohort/summary.tsv"] == "DIFFERS (decoded content)"
    assert verdicts["s1/maps.h5"] == "DIFFERS (decoded content)"


def test_compare_cli_exit_status(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.json").write_text("1")
    (tmp_path / "b" / "x.json").write_text("1")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    (tmp_path / "b" / "x.json").write_text("2")
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    assert "DIFFERS" in capsys.readouterr().out


def test_compare_command_runs_as_a_module(tmp_path):
    for side in ("a", "b"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "x.json").write_text("1")
    proc = subprocess.run(
        [sys.executable, "-m", "histoflow.manifest", "compare", "a", "b"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO / "workflow")},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "bytes\tx.json",
        "1 files: 1 identical bytes, 0 equal decoded, 0 run records ignored, 0 different",
    ]


def test_benchmark_reader(tmp_path):
    path = tmp_path / "b.tsv"
    path.write_text("s\th:m:s\tmax_rss\n2.0\t0:00:02\tNA\n4.0\t0:00:04\t300\n")
    assert read_benchmark(path) == {"s": 3.0, "max_rss": 300.0}
    path.write_text("seconds\n1.0\n")
    with pytest.raises(BenchmarkError, match=r"b\.tsv.*no column 's'"):
        read_benchmark(path)
    path.write_text("s\tmax_rss\n")
    with pytest.raises(BenchmarkError, match=r"b\.tsv.*no data row"):
        read_benchmark(path)
    # A benchmark file without measures still names its rule in the run record.
    (tmp_path / "bench" / "mask_tissue").mkdir(parents=True)
    path.replace(tmp_path / "bench" / "mask_tissue" / "s1.tsv")
    assert rule_timings(tmp_path / "bench", "s1") == {"mask_tissue": {"s": None, "max_rss": None}}


def test_sheet_record_casts_to_plain_values():
    row = {"path": np.str_("a.svs"), "mpp": np.float64(0.25), "mask": None}
    record = sheet_record(row)
    assert record == {"path": "a.svs", "mpp": 0.25, "mask": None}
    assert type(record["path"]) is str and type(record["mpp"]) is float
    assert sheet_record({"path": "b.svs", "mpp": "", "mask": "m.png"}) == {
        "path": "b.svs",
        "mpp": None,
        "mask": "m.png",
    }

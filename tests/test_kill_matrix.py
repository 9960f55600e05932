"""Nothing outlives a job: temporary siblings and job folders carry the histoflow mark
and the writer's pid, so the next run removes what a SIGKILLed job left, and never a
user's file; the kill matrix SIGKILLs each heavy rule part way (the HISTOFLOW_TEST_KILL
hook of histoflow.io.atomic) and finds no temporary file after the rerun."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_workflow
from histoflow.io import atomic
from histoflow.synthetic.tissue import tissue_blocks
from histoflow.synthetic.writers import write_slide


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


CHILD = """
import sys, time
sys.path.insert(0, {engine!r})
{body}
print("ready", flush=True)
time.sleep(60)
"""


def sigkill_child(body: str) -> None:
    """Run `body` in a child process and SIGKILL it once `body` is done."""
    code = CHILD.format(engine=str(REPO / "workflow"), body=body)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_sigkilled_writer_leaves_nothing_after_the_next_write(tmp_path):
    final = tmp_path / "out" / "maps.zarr"
    sigkill_child(
        "from histoflow.io.atomic import atomic_output\n"
        f"cm = atomic_output({str(final)!r}); tmp = cm.__enter__(); tmp.mkdir()\n"
        "(tmp / 'chunk').write_text('half')"
    )
    assert [p.name for p in final.parent.iterdir()]  # the killed writer left its temporary
    with atomic.atomic_output(final) as tmp:
        tmp.mkdir()
    assert [p.name for p in final.parent.iterdir()] == ["maps.zarr"]


def test_sigkilled_spill_cache_is_removed_by_the_next_merge(tmp_path):
    from histoflow.merge.memory import SpillCache

    sigkill_child(
        "from histoflow.merge.memory import SpillCache\n"
        f"SpillCache({str(tmp_path)!r}).new_dir().mkdir()"
    )
    assert list(tmp_path.iterdir())  # the killed merge left its spill cache
    cache = SpillCache(str(tmp_path))
    cache.new_dir()
    cache.cleanup()
    assert list(tmp_path.iterdir()) == []


def test_stale_siblings_of_killed_writers_are_removed_and_user_files_kept(tmp_path):
    final = tmp_path / "maps.zarr"
    stale_dir = tmp_path / f".maps.zarr.{atomic.TEMP_MARK}-{dead_pid()}"
    (stale_dir / "c").mkdir(parents=True)
    journal = tmp_path / f".s.sqlite.{atomic.TEMP_MARK}-12345-journal"
    journal.write_text("x")
    spill = tmp_path / f".maps.zarr.{atomic.TEMP_MARK}-{dead_pid()}.spill"  # tile_stores NPZ
    spill.mkdir()
    users = [
        tmp_path / ".maps.zarr.tmp-1",  # not ours: no histoflow mark
        tmp_path / f".maps.zarr.{atomic.TEMP_MARK}-notapid",
        tmp_path / f"maps.zarr.{atomic.TEMP_MARK}-1",  # not hidden
        tmp_path / f".other.zarr.{atomic.TEMP_MARK}-1",  # another output
    ]
    for path in users:
        path.write_text("user")
    with atomic.atomic_output(final) as tmp:
        assert not stale_dir.exists() and not spill.exists()
        tmp.mkdir()
    assert final.is_dir()
    with atomic.atomic_output(tmp_path / "s.sqlite") as tmp:
        tmp.write_text("db")
    assert not journal.exists()
    assert all(p.read_text() == "user" for p in users)


def test_stale_job_dirs_removed_only_when_their_process_is_gone(tmp_path):
    dead = tmp_path / f"{atomic._job_prefix('merge', 's1')}{dead_pid()}.0"
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f"{atomic._job_prefix('merge', 's1')}{live_proc.pid}.0"
        other_sample = tmp_path / f"{atomic._job_prefix('merge', 's10')}{dead_pid()}.0"
        user = tmp_path / "histoflow-merge-s1-mine"
        for path in (dead, live, other_sample, user):
            path.mkdir()
        with atomic.job_dir("merge", "s1", tmp_path) as mine:
            assert mine.is_dir() and mine.name.startswith(atomic._job_prefix("merge", "s1"))
            assert not dead.exists()
            assert live.exists() and other_sample.exists() and user.exists()
        assert not mine.exists()
    finally:
        live_proc.kill()
        live_proc.wait()


def test_ometiff_level_files_are_unlinked_while_written(tmp_path, monkeypatch):
    from export_fixtures import make_maps
    from histoflow.export import ometiff

    seen = []
    real = ometiff._anonymous_memmap

    def spy(path, dtype, shape, sample=None):
        array = real(path, dtype, shape, sample)
        seen.append(path.exists())
        return array

    monkeypatch.setattr(ometiff, "_anonymous_memmap", spy)
    maps = make_maps(tmp_path / "maps.zarr", height=700, width=600)
    (tmp_path / "tmp").mkdir()
    options = ometiff.HeatmapOptions.from_config({"tile": 128})
    ometiff.export_ometiff(maps, tmp_path / "s.ome.tif", "s", options, tmpdir=tmp_path / "tmp")
    assert seen and not any(seen)  # no level file stays on disk while it is in use
    assert not list((tmp_path / "tmp").iterdir())


SNAKEMAKE_STAMP = ".snakemake_timestamp"  # Snakemake's own mark in directory outputs


def leftovers(workdir: Path, tmpdir: Path) -> list[str]:
    """Temporary files anywhere in results/ (hidden siblings, partial stores) and every
    histoflow folder in TMPDIR."""
    found = [
        str(p.relative_to(workdir))
        for p in (workdir / "results").rglob("*")
        if (p.name.startswith(".") and p.name != SNAKEMAKE_STAMP) or atomic.TEMP_MARK in p.name
    ]
    found += [str(p) for p in tmpdir.iterdir() if p.name.startswith("histoflow")]
    return sorted(found)


# Run after run, the rules SIGKILLed part way: the output file names the hook watches.
KILLS = {
    "infer_patches": ["raw.zarr"],
    "merge_patches": ["maps.zarr"],
    "extract_instances+maps exports": [
        "instances.parquet",
        "s.zarr",
        "s.h5",
        "s.npz",
        "s.ome.tif",
    ],
    "object exports": ["s.geojson", "s.sqlite", "s.objects.tsv", "s.summary.tsv"],
}


@pytest.mark.e2e
def test_kill_matrix_leaves_nothing_after_rerun(tmp_path, monkeypatch):
    rgb, _ = tissue_blocks(640, 640, seed=3)
    slide = write_slide(tmp_path / "slide.tif", np.asarray(rgb), 0.5)
    work, jobtmp = tmp_path / "work", tmp_path / "jobtmp"
    jobtmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(jobtmp))
    samples = [{"sample": "s", "path": slide, "mpp": 0.5}]
    config = {
        "stages": ["mask", "infer", "merge", "instances", "export"],
        "inference": {"batch_size": 1, "chunk_patches": 1, "stride": 192, "device": "cpu"},
        "merge": {"memory_percent": 0},  # spill, so merge has a job folder to leave
        "instances": {"workers": 1, "executor": "thread"},
        "export": {"summary_timings": False},
    }
    args = ["--default-resources", f"tmpdir='{jobtmp}'"]
    left = {}
    for step, names in KILLS.items():
        monkeypatch.setenv(atomic.KILL_ENV, ",".join(names))
        proc = run_workflow(work, samples=samples, config=config, args=args, check=False)
        assert proc.returncode != 0, f"{step}: nothing was killed\n{proc.stdout[-3000:]}"
        left[step] = leftovers(work, jobtmp)
        assert left[step], f"{step}: the kill left nothing to clean (the test proves nothing)"
    monkeypatch.delenv(atomic.KILL_ENV)
    run_workflow(work, samples=samples, config=config, args=args)
    assert (work / "results" / "s" / "export" / "s.ome.tif").exists()
    print("left by the kills:", left)
    assert leftovers(work, jobtmp) == [], left
    log = (work / "logs" / "infer_patches" / "s.log").read_text()
    assert "resuming" in log  # the killed inference resumed from its partial store
    print("TMPDIR after the rerun:", sorted(os.listdir(jobtmp)))

"""Bad-input matrix, merge stage: a spill directory that cannot be used ends the job with
one message naming the directory, and leaves no maps behind."""

import errno

import pytest
from histoflow import merge
from histoflow.merge import MergeOptions, memory
from histoflow.merge.memory import SpillCache, SpillError
from histoflow.synthetic.raw import write_synthetic_raw


def test_spill_dir_not_a_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpillError, match=rf"spill directory '{blocker}/sub' is not usable"):
        SpillCache(str(blocker / "sub")).new_dir()


def test_spill_disk_full(tmp_path, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(memory, "make_job_dir", full)
    with pytest.raises(SpillError, match="No space left on device"):
        SpillCache(str(tmp_path)).new_dir()


def test_forced_spill_into_unusable_dir_leaves_no_maps(tmp_path):
    raw = tmp_path / "raw.zarr"
    write_synthetic_raw(raw, (300, 260), (64, 64), (48, 48), {"prob": 2})
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = tmp_path / "maps.zarr"
    with pytest.raises(SpillError):
        merge.run(
            str(raw), str(out), MergeOptions.from_config({"memory_percent": 0}), tmpdir=str(blocker)
        )
    assert not out.exists()

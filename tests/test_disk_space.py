"""Disk full, checked first: writes whose size is known in advance (raw.zarr, maps.zarr,
the merge spill, OME-TIFF level files) refuse early with one line naming the sample,
the path and the free space, and leave nothing behind."""

import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import make_maps
from histoflow import merge
from histoflow.errors import HistoflowError
from histoflow.io.raw_zarr import RawZarrWriter, partial_path
from histoflow.merge import MergeOptions
from histoflow.synthetic.raw import write_synthetic_raw

Usage = namedtuple("Usage", "total used free")
FREE = 1 << 20  # 1 MB


@pytest.fixture
def full_disk(monkeypatch):
    """Only 1 MB free under the folders listed in the returned set (default: all)."""
    full: set[Path] = set()
    real = shutil.disk_usage

    def usage(path):
        path = Path(path).absolute()
        if not full or any(path == p or p in path.parents for p in full):
            return Usage(1 << 40, (1 << 40) - FREE, FREE)
        return real(path)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    return full


def check_one_line(err, *parts):
    message = str(err.value)
    assert type(err.value).__name__ == "DiskSpaceError"
    assert "\n" not in message
    assert "1.0 MB free" in message
    for part in parts:
        assert part in message


@pytest.mark.usefixtures("full_disk")
def test_raw_zarr_refused_before_writing(tmp_path):
    boxes = np.array([[256 * i, 0, 256 * i + 256, 256] for i in range(100)])
    heads = [{"name": "p", "channels": 3}]
    out = tmp_path / "raw.zarr"
    with pytest.raises(HistoflowError) as err:
        RawZarrWriter(out, boxes, boxes[:, :2], heads, (256, 256), {"sample": "s1"})
    check_one_line(err, "sample 's1'", "raw.zarr", str(partial_path(out)))
    assert not partial_path(out).exists() and not out.exists()


@pytest.mark.usefixtures("full_disk")
def test_small_raw_zarr_fits(tmp_path):
    boxes = np.array([[0, 0, 4, 4]])
    w = RawZarrWriter(
        tmp_path / "r.zarr",
        boxes,
        boxes[:, :2],
        [{"name": "p", "channels": 1}],
        (4, 4),
        {"sample": "s1"},
    )
    w.append({"p": np.ones((1, 4, 4, 1), np.float16)})
    assert w.close().exists()


def test_maps_zarr_refused_before_merging(tmp_path):
    raw = tmp_path / "raw.zarr"
    write_synthetic_raw(raw, (600, 600), (64, 64), (48, 48), {"prob": 2}, sample="s2")
    out = tmp_path / "out" / "maps.zarr"
    out.parent.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        real = shutil.disk_usage
        mp.setattr(
            shutil,
            "disk_usage",
            lambda p: Usage(1 << 40, 0, 1 << 10) if Path(p) == out.parent else real(p),
        )
        with pytest.raises(HistoflowError) as err:
            merge.run(str(raw), str(out))
    message = str(err.value)
    assert "sample 's2'" in message and "maps.zarr" in message and str(out) in message
    assert "0.0 MB free" in message
    assert not out.exists() and not list(out.parent.iterdir())


def test_spill_refused_before_spilling(tmp_path, full_disk):
    raw = tmp_path / "raw.zarr"
    write_synthetic_raw(raw, (100, 3000), (64, 64), (48, 48), {"prob": 2}, sample="s3")
    spill = tmp_path / "spill"
    spill.mkdir()
    full_disk.add(spill)
    out = tmp_path / "maps.zarr"
    opts = MergeOptions.from_config({"memory_percent": 0})
    with pytest.raises(HistoflowError) as err:
        merge.run(str(raw), str(out), opts, tmpdir=str(spill))
    check_one_line(err, "sample 's3'", "merge spill cache", str(spill))
    assert not out.exists() and not list(spill.iterdir())


def test_ometiff_levels_refused_before_mapping(tmp_path, full_disk):
    from histoflow.export.ometiff import HeatmapOptions, export_ometiff

    maps = make_maps(tmp_path / "maps.zarr", height=1500, width=1500)
    levels = tmp_path / "levels"
    levels.mkdir()
    full_disk.add(levels)
    out = tmp_path / "s4.ome.tif"
    options = HeatmapOptions.from_config({"tile": 128})
    with pytest.raises(HistoflowError) as err:
        export_ometiff(maps, out, "s4", options, tmpdir=levels)
    check_one_line(err, "sample 's4'", "OME-TIFF level files", str(levels))
    assert not out.exists() and not list(levels.iterdir())
    assert not list(tmp_path.glob(".s4.ome.tif*"))


def test_ometiff_level_allocation_failure_is_one_line(tmp_path, monkeypatch):
    """The disk fills up after the check: the level file's allocation fails with an
    error, where writes into an unallocated mapping would die of SIGBUS."""
    import errno
    import os

    from histoflow.export.ometiff import HeatmapOptions, export_ometiff

    def enospc(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", enospc, raising=False)
    maps = make_maps(tmp_path / "maps.zarr", height=700, width=600)
    levels = tmp_path / "levels"
    levels.mkdir()
    out = tmp_path / "s5.ome.tif"
    with pytest.raises(HistoflowError) as err:
        export_ometiff(maps, out, "s5", HeatmapOptions.from_config({"tile": 128}), tmpdir=levels)
    message = str(err.value)
    assert "\n" not in message and "OME-TIFF level file" in message and str(levels) in message
    assert "No space left on device" in message and "MB free" in message
    assert not out.exists() and not list(levels.iterdir())

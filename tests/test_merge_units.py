"""Unit tests of the merge engine's parts: spill policy, resources, canvas, writer, options."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import zarr
from histoflow.errors import ConfigError
from histoflow.io.maps_zarr import MapsZarrError, MapsZarrWriter, open_maps, read_maps_attrs
from histoflow.io.raw_zarr import RawZarrError, read_raw_attrs
from histoflow.merge import MergeOptions, memory, resources
from histoflow.merge.canvas import Canvas, MemoryStorage, Region, ZarrStorage
from histoflow.merge.memory import MB, MemoryPolicy, SpillCache


class FakeProcess:
    def __init__(self, rss_mb: float):
        self.rss = int(rss_mb * MB)

    def memory_info(self):
        return SimpleNamespace(rss=self.rss)


@pytest.fixture
def ram_1000mb(monkeypatch):
    monkeypatch.setattr(
        memory.psutil, "virtual_memory", lambda: SimpleNamespace(available=1000 * MB)
    )


@pytest.mark.usefixtures("ram_1000mb")
def test_policy_limit_is_percent_of_available_lowered_by_cap():
    assert MemoryPolicy(50, None, FakeProcess(0)).limit == 500 * MB
    assert MemoryPolicy(50, 200, FakeProcess(0)).limit == 200 * MB
    assert MemoryPolicy(10, 200, FakeProcess(0)).limit == 100 * MB


@pytest.mark.usefixtures("ram_1000mb")
def test_policy_spills_when_rss_plus_band_passes_limit_and_stays_spilled():
    proc = FakeProcess(300)
    policy = MemoryPolicy(50, None, proc)
    assert not policy.decide(150 * MB).spill
    decision = policy.decide(250 * MB)
    assert decision.spill
    assert "RSS 300 MB + accumulator 250.0 MB > limit 500 MB" in decision.reason
    proc.rss = 0
    assert policy.decide(1).spill  # sticky: no flip-flopping between disk and memory


@pytest.mark.usefixtures("ram_1000mb")
def test_policy_percent_zero_forces_spilling():
    assert MemoryPolicy(0, None, FakeProcess(1)).decide(0).spill


def test_policy_rejects_bad_percent():
    with pytest.raises(ValueError):
        MemoryPolicy(101)


def test_spill_cache_is_lazy_and_removed(tmp_path):
    cache = SpillCache(str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    first, second = cache.new_dir(), cache.new_dir()
    assert first != second and first.parent == second.parent == cache.root
    first.mkdir()
    cache.cleanup()
    assert list(tmp_path.iterdir()) == []


def _attrs(width, height, heads=(("a", 1), ("b", 2)), patch=(256, 256), stride=(224, 224)):
    return {
        "shape": [height, width],
        "patch_output": list(patch),
        "stride": list(stride),
        "heads": [{"name": n, "channels": c, "activation": "none"} for n, c in heads],
    }


def test_mem_mb_grows_with_width_not_height():
    narrow, wide = _attrs(4096, 16384), _attrs(16384, 16384)
    tall = _attrs(16384, 65536)
    assert resources.merge_mem_mb(tall) == resources.merge_mem_mb(wide)
    assert resources.merge_mem_mb(wide) > resources.merge_mem_mb(narrow) > resources.BASE_MB
    # 16k wide, 3 channels: two 256-row canvases of 14 B/px are ~112 MB.
    assert resources.merge_mem_mb(wide) < 1000


def test_threads_from_band_size():
    assert resources.merge_threads(_attrs(512, 512)) == 1
    assert resources.merge_threads(_attrs(16384, 512)) == 2
    assert resources.merge_threads(None) == resources.FALLBACK_THREADS


def test_raw_attrs_reads_zarr_json_or_none(tmp_path):
    assert read_raw_attrs(tmp_path / "missing.zarr") is None
    store = tmp_path / "raw.zarr"
    store.mkdir()
    attrs = _attrs(100, 100)
    (store / "zarr.json").write_text(json.dumps({"node_type": "group", "attributes": attrs}))
    assert read_raw_attrs(store) == attrs
    assert resources.merge_mem_mb(None) == resources.FALLBACK_MEM_MB


@pytest.mark.parametrize(
    ("read", "error"), [(read_raw_attrs, RawZarrError), (read_maps_attrs, MapsZarrError)]
)
def test_attrs_of_a_broken_store_are_an_error_naming_the_file(tmp_path, read, error):
    store = tmp_path / "broken.zarr"
    store.mkdir()
    with pytest.raises(error, match=r"broken\.zarr/zarr\.json"):
        read(store)  # no metadata at all
    (store / "zarr.json").write_text("{not json")
    with pytest.raises(error, match=r"broken\.zarr/zarr\.json.*not readable"):
        read(store)
    (store / "zarr.json").write_text(json.dumps({"node_type": "array", "attributes": {}}))
    with pytest.raises(error, match=r"broken\.zarr/zarr\.json.*not the metadata of a Zarr group"):
        read(store)


def test_region_geometry():
    a, b = Region(0, 10, 0, 10), Region(5, 20, 8, 12)
    assert a.union(b) == Region(0, 20, 0, 12)
    assert a.intersect(b) == Region(5, 10, 8, 10)
    assert a.intersect(Region(10, 12, 0, 5)).empty
    assert a.contains(Region(2, 3, 4, 5)) and not a.contains(b)
    assert a.rows(3, 7) == Region(3, 7, 0, 10)


@pytest.mark.parametrize("spilled", [False, True])
def test_canvas_take_rows_and_extent(tmp_path, spilled):
    def factory(shapes):
        if spilled:
            return ZarrStorage(shapes, tmp_path / "c.zarr", chunk_cols=3, block_cols=2)
        return MemoryStorage(shapes)

    canvas = Canvas(Region(10, 20, 100, 110), {"p": 1}, factory)
    canvas.add_patch(Region(10, 14, 100, 104), {"p": np.full((4, 4, 1), 2, np.float32)})
    canvas.add_patch(Region(12, 20, 102, 106), {"p": np.full((8, 4, 1), 4, np.float32)})
    assert canvas.extent() == Region(10, 20, 100, 106)
    taken = list(canvas.take_rows(14, align=2))
    assert [b.y0 for b, _, _ in taken] == sorted(b.y0 for b, _, _ in taken)
    assert all(b.y1 - 1 < (b.y0 // 2 + 1) * 2 for b, _, _ in taken)  # no block crosses a row pair
    got = np.zeros((4, 6))
    cov = np.zeros((4, 6), int)
    for block, sums, count in taken:
        ys, xs = slice(block.y0 - 10, block.y1 - 10), slice(block.x0 - 100, block.x1 - 100)
        got[ys, xs] = sums["p"][..., 0]
        cov[ys, xs] = count
    np.testing.assert_array_equal(cov[3], [1, 1, 2, 2, 1, 1])
    np.testing.assert_array_equal(got[3], [2, 2, 6, 6, 4, 4])
    assert canvas.region == Region(14, 20, 100, 110)
    # Only the second patch reaches the live rows now.
    assert canvas.extent() == Region(14, 20, 102, 106)
    canvas.close()
    assert not (tmp_path / "c.zarr").exists()


def test_writer_refuses_rows_out_of_order(tmp_path):
    writer = MapsZarrWriter(tmp_path / "m.zarr", (10, 4), {"a": 1}, band_rows=3, attrs={})
    list(writer.segments(Region(6, 8, 0, 4)))
    with pytest.raises(RuntimeError, match="out of order"):
        list(writer.segments(Region(0, 2, 0, 4)))
    writer.abort()


def test_writer_rejects_head_named_coverage(tmp_path):
    with pytest.raises(ValueError, match="coverage"):
        MapsZarrWriter(tmp_path / "m.zarr", (10, 4), {"coverage": 1}, band_rows=3, attrs={})


def test_options_from_config_names_bad_fields():
    opts = MergeOptions.from_config({"memory_percent": 30, "memory_cap_mb": None})
    assert opts.memory_percent == 30 and opts.compression == "blosc-zstd"
    with pytest.raises(ConfigError, match=r"merge\.bogus"):
        MergeOptions.from_config({"bogus": 1})
    with pytest.raises(ConfigError, match=r"merge\.compression"):
        MergeOptions.from_config({"compression": "gzip"})
    with pytest.raises(ConfigError, match=r"merge\.band_rows"):
        MergeOptions.from_config({"band_rows": 0})


def test_rule_callables_read_the_jobs_raw_store(tmp_path):
    raw = tmp_path / "raw.zarr"
    job_input = SimpleNamespace(raw=str(raw))
    threads = resources.rule_threads({"band_rows": None})
    mem_mb = resources.rule_mem_mb({"band_rows": None})
    # Before infer_patches has run (dry run): the fallbacks.
    assert threads(None, job_input) == resources.FALLBACK_THREADS
    assert mem_mb(None, job_input, 1) == resources.FALLBACK_MEM_MB
    raw.mkdir()
    attrs = _attrs(16384, 65536)
    (raw / "zarr.json").write_text(json.dumps({"node_type": "group", "attributes": attrs}))
    assert threads(None, job_input) == 2
    assert mem_mb(None, job_input, 1) == resources.merge_mem_mb(attrs)
    assert mem_mb(None, job_input, 2) == 2 * resources.merge_mem_mb(attrs)


def _written_maps(path, shape=(10, 4)):
    attrs = {
        "shape": list(shape),
        "scale": 2.0,
        "mpp": 1.0,
        "slide_mpp": 0.5,
        "model": {"name": "toy"},
        "heads": [{"name": "a", "channels": 2, "activation": "sigmoid"}],
    }
    writer = MapsZarrWriter(path, shape, {"a": 2}, band_rows=3, attrs=attrs)
    writer.close()
    return path


def test_open_maps_reads_the_contract(tmp_path):
    maps = open_maps(_written_maps(tmp_path / "m.zarr"))
    assert (maps.shape, maps.scale, maps.mpp, maps.slide_mpp) == ((10, 4), 2.0, 1.0, 0.5)
    assert maps.channels == {"a": 2} and maps.band_rows == 3
    assert list(maps.arrays) == ["a", "coverage"]
    assert maps.nbytes == 10 * 4 * 2 * 4 + 10 * 4 * 2
    rows = maps.read_rows(["a", "coverage"], 2, 5)
    assert rows["a"].shape == (3, 4, 2) and rows["coverage"].shape == (3, 4)
    assert [(y0, b.shape[0]) for y0, b in maps.bands("a")] == [(0, 3), (3, 3), (6, 3), (9, 1)]
    assert read_maps_attrs(tmp_path / "m.zarr")["shape"] == [10, 4]
    assert read_maps_attrs(tmp_path / "none.zarr") is None


def test_open_maps_names_the_file_and_the_member(tmp_path):
    path = _written_maps(tmp_path / "m.zarr")
    zarr.open_group(path, mode="r+").attrs["heads"] = [{"name": "b", "channels": 1}]
    with pytest.raises(MapsZarrError, match=r"m\.zarr': array 'b' missing"):
        open_maps(path)
    with pytest.raises(MapsZarrError, match=r"nope\.zarr': not a readable maps\.zarr"):
        open_maps(tmp_path / "nope.zarr")
    zarr.open_group(path, mode="r+").attrs["shape"] = [9, 4]
    zarr.open_group(path, mode="r+").attrs["heads"] = [{"name": "a", "channels": 2}]
    with pytest.raises(MapsZarrError, match=r"array 'a' has shape \(10, 4, 2\)"):
        open_maps(path)


def test_wide_maps_write_with_one_buffer_set_and_the_same_bytes(tmp_path, monkeypatch):
    # Above DOUBLE_BUFFER_MAX_BYTES per buffer set (a 100k px wide slide with 10
    # channels), the writer keeps one set instead of two: same maps, less memory.
    from histoflow.merge import stage
    from histoflow.synthetic.raw import write_synthetic_raw

    raw = tmp_path / "raw.zarr"
    write_synthetic_raw(raw, (300, 500), (64, 64), (48, 48), {"p": 2, "q": 3})
    backgrounds = []
    real = stage.MapsZarrWriter

    def spy(*args, **kwargs):
        backgrounds.append(kwargs["background"])
        return real(*args, **kwargs)

    monkeypatch.setattr(stage, "MapsZarrWriter", spy)
    stage.run(raw, tmp_path / "double.zarr", threads=2)
    monkeypatch.setattr(stage, "DOUBLE_BUFFER_MAX_BYTES", 1)
    stage.run(raw, tmp_path / "single.zarr", threads=2)
    assert backgrounds == [True, False]
    double = zarr.open_group(tmp_path / "double.zarr", mode="r")
    single = zarr.open_group(tmp_path / "single.zarr", mode="r")
    for name in ("p", "q", "coverage"):
        np.testing.assert_array_equal(double[name][...], single[name][...])


def _store_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("threads", "spill"), [(1, False), (2, False), (1, True)], ids=["one", "two", "spilled"]
)
def test_column_windows_give_the_same_bytes(tmp_path, threads, spill):
    # Three windows of whole 1024-column chunks (the last 552 wide); a 16 px patch at
    # stride 12 straddles each window edge and overlaps its neighbours both ways.
    from histoflow.merge import stage
    from histoflow.synthetic.raw import write_synthetic_raw

    raw = tmp_path / "raw.zarr"
    keep = np.ones((4, 217), bool)
    keep[1, 100:] = False  # a row that stops inside the second window
    keep[2, :90] = False  # and one that starts there
    write_synthetic_raw(raw, (52, 2600), (16, 16), (12, 12), {"p": 1, "q": 3}, keep=keep)
    extra = {"memory_percent": 0} if spill else {}
    whole = stage.run(raw, tmp_path / "whole.zarr", MergeOptions.from_config(extra), threads=1)
    opts = MergeOptions.from_config(extra, window_cols=1500)  # rounded down to 1024
    windowed = stage.run(raw, tmp_path / "windowed.zarr", opts, threads=threads)
    assert (whole.windows, windowed.windows) == (1, 3)
    assert windowed.max_canvas_width <= 1024 + 16 < whole.max_canvas_width
    assert windowed.patches == whole.patches == int(keep.sum())
    assert windowed.chunks_written == whole.chunks_written
    one, other = _store_files(tmp_path / "whole.zarr"), _store_files(tmp_path / "windowed.zarr")
    assert one.keys() == other.keys() and len(one) > 10
    assert one == other


def test_writer_windows_are_whole_chunks(tmp_path):
    writer = MapsZarrWriter(tmp_path / "m.zarr", (10, 2500), {"a": 1}, band_rows=5, attrs={})
    for bad in ((0, 1000), (512, 2048), (1024, 1024), (2048, 2600)):
        with pytest.raises(ValueError, match="whole chunks"):
            writer.set_columns(*bad)
    writer.set_columns(2048, 2500)  # the last window may end at the map's edge
    assert writer.buffer_nbytes == 5 * 452 * (4 + 2)

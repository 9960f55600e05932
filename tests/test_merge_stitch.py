"""Stitch invariance of merge_patches: the band merge equals a naive full-canvas
sum/count, whatever the grid, stride, mask, edges, heads, chunking and spilling."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import zarr
from histoflow import merge
from histoflow.io.raw_zarr import RawZarrError, open_raw
from histoflow.merge import MergeOptions
from histoflow.synthetic.raw import write_synthetic_raw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NO_SPILL = dict(memory_percent=100.0)
FORCE_SPILL = dict(memory_percent=0.0)


@pytest.fixture(autouse=True)
def float32_maps(monkeypatch):
    # The merge arithmetic is checked in float32 maps; the compact stored types have
    # their own tests (test_compact_maps.py).
    import histoflow.merge.options as merge_options

    real = merge_options.schema_defaults
    monkeypatch.setattr(
        merge_options,
        "schema_defaults",
        lambda section: {**real(section), "encoding": "float32"},
    )


def naive_merge(raw_path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Full-slide float64 canvas: sum every patch, count every patch, divide."""
    raw = open_raw(raw_path)
    height, width = raw.shape
    sums = {n: np.zeros((height, width, c)) for n, c in raw.channels.items()}
    count = np.zeros((height, width), np.int64)
    values = raw.read(0, len(raw))
    for i, (x0, y0, x1, y1) in enumerate(raw.boxes.tolist()):
        cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)
        if cy0 >= cy1 or cx0 >= cx1:
            continue
        ys, xs = slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0)
        for n in sums:
            sums[n][cy0:cy1, cx0:cx1] += values[n][i, ys, xs]
        count[cy0:cy1, cx0:cx1] += 1
    maps = {
        n: np.divide(s, count[..., None], out=np.zeros_like(s), where=count[..., None] > 0)
        for n, s in sums.items()
    }
    return maps, count


def read_maps(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return {name: arr[...] for name, arr in group.arrays()}


def assert_matches_naive(raw_path: Path, maps: dict[str, np.ndarray]) -> None:
    expect, count = naive_merge(raw_path)
    np.testing.assert_array_equal(maps["coverage"], count)
    assert maps["coverage"].dtype == np.uint16
    for name, ref in expect.items():
        assert maps[name].dtype == np.float32
        np.testing.assert_allclose(maps[name], ref, rtol=1e-5, atol=1e-6, err_msg=name)


@st.composite
def grids(draw):
    h, w = draw(st.integers(2, 10)), draw(st.integers(2, 10))
    # Down to a third of the patch: a pixel may sit in three consecutive bands.
    sy = draw(st.integers(max(1, math.ceil(h / 3)), h))
    sx = draw(st.integers(max(1, math.ceil(w / 3)), w))
    # Negative origin: first row/column starts above/left of the slide (clipped).
    oy, ox = draw(st.integers(-(h // 2), 2)), draw(st.integers(-(w // 2), 2))
    rows, cols = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    # Slide ends anywhere inside the last patch: sizes not a multiple of the stride.
    height = max(1, oy + (rows - 1) * sy + h - draw(st.integers(0, h - 1)))
    width = max(1, ox + (cols - 1) * sx + w - draw(st.integers(0, w - 1)))
    n_heads = draw(st.integers(1, 3))
    heads = {f"h{i}": draw(st.integers(1, 4)) for i in range(n_heads)}
    return dict(
        shape=(height, width),
        patch=(h, w),
        stride=(sy, sx),
        origin=(oy, ox),
        heads=heads,
        keep_p=draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])),
        dtype=draw(st.sampled_from(["float16", "float32"])),
        seed=draw(st.integers(0, 2**16)),
        band_rows=draw(st.one_of(st.none(), st.integers(1, 2 * h + 1))),
        read_batch=draw(st.integers(1, 7)),
        spill_block_cols=draw(st.integers(1, 2 * w)),
        threads=draw(st.sampled_from([1, 2])),
    )


def make_raw(path: Path, g: dict) -> Path:
    from histoflow.synthetic.raw import grid_boxes

    _, _, grid_shape = grid_boxes(g["shape"], g["patch"], g["stride"], g["origin"])
    keep = np.random.default_rng(g["seed"]).random(grid_shape) < g["keep_p"]
    write_synthetic_raw(
        path,
        g["shape"],
        g["patch"],
        g["stride"],
        g["heads"],
        origin=g["origin"],
        keep=keep,
        dtype=g["dtype"],
        seed=g["seed"],
        chunk_patches=3,
    )
    return path


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(g=grids())
def test_merge_equals_naive_with_and_without_spilling(tmp_path_factory, g):
    tmp = tmp_path_factory.mktemp("prop")
    raw = make_raw(tmp / "raw.zarr", g)
    band_rows = {"band_rows": g["band_rows"]}
    tuning = dict(read_batch=g["read_batch"], spill_block_cols=g["spill_block_cols"])
    merge.run(raw, tmp / "mem.zarr", MergeOptions.from_config({**NO_SPILL, **band_rows}, **tuning))
    # threads=2 adds raw prefetch and a background writer; neither may change a value.
    stats = merge.run(
        raw,
        tmp / "disk.zarr",
        MergeOptions.from_config({**FORCE_SPILL, **band_rows}, **tuning),
        threads=g["threads"],
    )
    in_memory, spilled = read_maps(tmp / "mem.zarr"), read_maps(tmp / "disk.zarr")
    assert_matches_naive(raw, in_memory)
    assert stats.spilled_bands == stats.bands
    assert in_memory.keys() == spilled.keys()
    for name in in_memory:
        # Same float operations in the same order: bit-identical, not just close.
        np.testing.assert_array_equal(in_memory[name], spilled[name], err_msg=name)


def test_single_patch_larger_than_slide(tmp_path):
    raw = write_synthetic_raw(tmp_path / "raw.zarr", (5, 7), (8, 8), (8, 8), {"p": 2}, seed=3)
    assert raw["boxes"].shape == (1, 4)
    merge.run(tmp_path / "raw.zarr", tmp_path / "maps.zarr")
    maps = read_maps(tmp_path / "maps.zarr")
    patch = raw["heads/p"][0, :5, :7].astype(np.float32)
    np.testing.assert_array_equal(maps["p"], patch)
    assert (maps["coverage"] == 1).all()


def test_no_tissue_zero_patches(tmp_path, caplog):
    keep = np.zeros((3, 4), bool)
    write_synthetic_raw(
        tmp_path / "raw.zarr", (30, 40), (10, 10), (10, 10), {"a": 1, "b": 3}, keep=keep
    )
    with caplog.at_level(logging.WARNING, logger="histoflow.merge"):
        stats = merge.run(tmp_path / "raw.zarr", tmp_path / "maps.zarr")
    assert "no patches" in caplog.text
    assert stats.bands == 0 and stats.patches == 0
    maps = read_maps(tmp_path / "maps.zarr")
    assert maps["a"].shape == (30, 40, 1) and maps["b"].shape == (30, 40, 3)
    assert not maps["coverage"].any() and not maps["a"].any() and not maps["b"].any()


def test_coverage_zero_distinguishes_no_patch_from_probability_zero(tmp_path):
    keep = np.array([[True, False], [False, False]])

    def zeros(boxes, _grid):
        return {"p": np.zeros((len(boxes), 4, 4, 1), np.float16)}

    write_synthetic_raw(
        tmp_path / "raw.zarr", (8, 8), (4, 4), (4, 4), {"p": 1}, keep=keep, values=zeros
    )
    merge.run(tmp_path / "raw.zarr", tmp_path / "maps.zarr")
    maps = read_maps(tmp_path / "maps.zarr")
    assert not maps["p"].any()
    assert (maps["coverage"][:4, :4] == 1).all()
    assert maps["coverage"].sum() == 16


def test_band_is_only_as_wide_as_the_rows_span_and_as_tall_as_a_patch(tmp_path):
    # A thin vertical strip of tissue on a wide, tall slide.
    h, stride, rows, cols = 16, 12, 40, 60
    keep = np.zeros((rows, cols), bool)
    keep[:, 20:23] = True
    keep[10:15, 40] = True  # a few rows reach further right
    write_synthetic_raw(
        tmp_path / "raw.zarr", (rows * stride + 4, cols * stride + 4), (h, h), (stride, stride),
        {"a": 2}, keep=keep,
    )  # fmt: skip
    stats = merge.run(tmp_path / "raw.zarr", tmp_path / "maps.zarr")
    narrow = 2 * stride + h  # three patches side by side
    widths = [c.width for c in stats.canvases]
    assert max(c.height for c in stats.canvases) == h
    assert widths.count(narrow) >= rows - 6  # rows without the far-right patch
    assert max(widths) == (40 - 20) * stride + h  # the union with the far-right patch
    assert stats.max_canvas_bytes <= h * max(widths) * (2 * 4 + 2)
    assert stats.bands == rows
    assert_matches_naive(tmp_path / "raw.zarr", read_maps(tmp_path / "maps.zarr"))


def test_fully_masked_grid_rows_leave_zero_coverage_gap(tmp_path):
    keep = np.ones((5, 3), bool)
    keep[2] = False
    write_synthetic_raw(tmp_path / "raw.zarr", (40, 24), (8, 8), (8, 8), {"a": 1}, keep=keep)
    merge.run(
        tmp_path / "raw.zarr", tmp_path / "maps.zarr", MergeOptions.from_config({"band_rows": 5})
    )
    maps = read_maps(tmp_path / "maps.zarr")
    assert not maps["coverage"][16:24].any()
    assert (maps["coverage"][:16] == 1).all() and (maps["coverage"][24:] == 1).all()
    assert_matches_naive(tmp_path / "raw.zarr", maps)


def test_output_layout_and_attributes(tmp_path):
    src = write_synthetic_raw(tmp_path / "raw.zarr", (50, 70), (16, 16), (12, 12), {"a": 1, "b": 3})
    merge.run(
        tmp_path / "raw.zarr", tmp_path / "maps.zarr", MergeOptions.from_config({"band_rows": 20})
    )
    group = zarr.open_group(tmp_path / "maps.zarr", mode="r")
    assert sorted(k for k, _ in group.arrays()) == ["a", "b", "coverage"]
    assert group["a"].shape == (50, 70, 1) and group["a"].chunks == (20, 70, 1)
    assert group["b"].shape == (50, 70, 3) and group["b"].chunks == (20, 70, 3)
    assert group["coverage"].chunks == (20, 70) and group["coverage"].dtype == np.uint16
    assert group.attrs["band_rows"] == 20
    for key, value in src.attrs.items():
        assert group.attrs[key] == value, key
    assert not list(tmp_path.glob(".maps.zarr.*tmp*"))


def test_default_band_rows_is_the_vertical_stride(tmp_path):
    write_synthetic_raw(tmp_path / "raw.zarr", (50, 70), (16, 16), (12, 10), {"a": 1})
    stats = merge.run(tmp_path / "raw.zarr", tmp_path / "maps.zarr")
    assert stats.band_rows == 12
    assert zarr.open_group(tmp_path / "maps.zarr", mode="r")["a"].chunks == (12, 70, 1)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_compression_and_writer_thread_do_not_change_values(tmp_path, compression):
    write_synthetic_raw(tmp_path / "raw.zarr", (45, 33), (12, 12), (9, 9), {"a": 2}, seed=5)
    merge.run(tmp_path / "raw.zarr", tmp_path / "ref.zarr")
    merge.run(
        tmp_path / "raw.zarr",
        tmp_path / "alt.zarr",
        MergeOptions.from_config({"compression": compression, "band_rows": 7}),
        threads=2,
    )
    ref, alt = read_maps(tmp_path / "ref.zarr"), read_maps(tmp_path / "alt.zarr")
    for name in ref:
        np.testing.assert_array_equal(ref[name], alt[name])


def test_rerun_gives_identical_bytes(tmp_path):
    write_synthetic_raw(tmp_path / "raw.zarr", (45, 33), (12, 12), (9, 9), {"a": 2, "b": 1})
    # Threads (prefetch, background writer, Blosc's own) must not change a byte either.
    for out, threads in (("one.zarr", 1), ("two.zarr", 2)):
        merge.run(tmp_path / "raw.zarr", tmp_path / out, threads=threads)

    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    one, two = files(tmp_path / "one.zarr"), files(tmp_path / "two.zarr")
    assert one.keys() == two.keys() and len(one) > 3
    assert one == two


def test_spill_is_logged_and_cache_removed(tmp_path, caplog):
    write_synthetic_raw(tmp_path / "raw.zarr", (40, 40), (10, 10), (8, 8), {"a": 1})
    spill_tmp = tmp_path / "jobtmp"
    spill_tmp.mkdir()
    with caplog.at_level(logging.INFO, logger="histoflow.merge"):
        stats = merge.run(
            tmp_path / "raw.zarr",
            tmp_path / "maps.zarr",
            MergeOptions.from_config({"memory_percent": 100, "memory_cap_mb": 1}),
            tmpdir=str(spill_tmp),
        )
    assert stats.spilled_bands == stats.bands > 0
    assert "spilling accumulators to disk from slide row 0" in caplog.text
    assert "cap 1 MB" in caplog.text and "RSS" in caplog.text
    assert f"spill cache: {spill_tmp}" in caplog.text
    assert list(spill_tmp.iterdir()) == []


def test_failure_removes_cache_and_leaves_no_output(tmp_path, monkeypatch):
    from histoflow.merge import canvas

    write_synthetic_raw(tmp_path / "raw.zarr", (40, 40), (10, 10), (8, 8), {"a": 1})
    spill_tmp = tmp_path / "jobtmp"
    spill_tmp.mkdir()
    calls = {"n": 0}
    real_add = canvas.ZarrStorage.add

    def failing_add(self, name, sl, values):
        calls["n"] += 1
        if calls["n"] > 40:
            raise OSError("disk full (simulated)")
        real_add(self, name, sl, values)

    monkeypatch.setattr(canvas.ZarrStorage, "add", failing_add)
    with pytest.raises(OSError, match="simulated"):
        merge.run(
            tmp_path / "raw.zarr",
            tmp_path / "maps.zarr",
            MergeOptions.from_config(FORCE_SPILL),
            tmpdir=str(spill_tmp),
            threads=2,
        )
    assert calls["n"] > 40
    assert list(spill_tmp.iterdir()) == []
    assert not (tmp_path / "maps.zarr").exists()
    assert not list(tmp_path.glob(".maps.zarr.*tmp*"))


def test_grid_not_row_major_is_rejected_with_file_name(tmp_path):
    group = write_synthetic_raw(tmp_path / "raw.zarr", (20, 20), (8, 8), (8, 8), {"a": 1})
    grid = group["grid"][...]
    group["grid"][...] = grid[::-1]
    with pytest.raises(RawZarrError, match=r"raw\.zarr.*row-major"):
        merge.run(tmp_path / "raw.zarr", tmp_path / "maps.zarr")


def test_box_size_must_match_head_arrays(tmp_path):
    group = write_synthetic_raw(tmp_path / "raw.zarr", (20, 20), (8, 8), (8, 8), {"a": 1})
    boxes = group["boxes"][...]
    boxes[1, 2] += 1
    group["boxes"][...] = boxes
    with pytest.raises(RawZarrError, match="box 1"):
        merge.run(tmp_path / "raw.zarr", tmp_path / "maps.zarr")


def test_coverage_overflow_is_refused(tmp_path):
    # 256x256 patches at stride 1: up to 65536 patches on a pixel, one more than uint16.
    keep = np.zeros((45, 45), bool)
    keep[0, 0] = True
    write_synthetic_raw(tmp_path / "raw.zarr", (300, 300), (256, 256), (1, 1), {"a": 1}, keep=keep)
    with pytest.raises(RawZarrError, match="uint16"):
        merge.run(tmp_path / "raw.zarr", tmp_path / "maps.zarr")


def test_missing_store_names_the_file(tmp_path):
    with pytest.raises(RawZarrError, match=r"nope\.zarr"):
        merge.run(tmp_path / "nope.zarr", tmp_path / "maps.zarr")

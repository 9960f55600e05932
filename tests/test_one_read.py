"""One read per pixel: overlapping patches of a row are cut from one read (issue 16, item 5)."""

from __future__ import annotations

import numpy as np
import pytest
from histoflow.inference import core
from histoflow.inference.grid import make_grid
from histoflow.slide import Slide
from histoflow.synthetic.tissue import tissue_blocks
from histoflow.synthetic.writers import write_pyramidal_tiff


def regions_of(boxes: np.ndarray) -> np.ndarray:
    return np.column_stack(
        [np.zeros(len(boxes), np.int64), boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]
    )


def hovernet_regions(width: int, height: int, keep=None) -> np.ndarray:
    """Input boxes of a 256 -> 164 px grid (stride 164) over width x height."""
    grid = make_grid((height, width), (256, 256), (164, 164), (164, 164))
    boxes = grid.input_boxes()
    return regions_of(boxes if keep is None else boxes[keep(len(boxes))])


def test_runs_join_touching_neighbours_of_one_row_only():
    r = np.array(
        [
            [0, 0, 0, 256, 256],
            [0, 164, 0, 256, 256],  # overlaps the first: same run
            [0, 600, 0, 256, 256],  # a gap: new run
            [0, 856, 0, 256, 256],  # touches: same run
            [0, 1020, 164, 256, 256],  # next row
            [1, 1184, 164, 256, 256],  # another sample
        ]
    )
    runs = core.plan_runs(r)
    assert runs[:2].tolist() == [[0, 0, 0, 420, 256]] * 2
    assert runs[2:4].tolist() == [[0, 600, 0, 512, 256]] * 2
    assert runs[4].tolist() == r[4].tolist() and runs[5].tolist() == r[5].tolist()
    # Never wider than the cap (a single wider region stays whole).
    wide = core.plan_runs(r[:2], max_width=300)
    assert wide.tolist() == r[:2].tolist()


def test_every_region_lies_inside_its_run():
    r = hovernet_regions(4000, 1200, keep=lambda n: np.random.default_rng(0).random(n) < 0.7)
    runs = core.plan_runs(r)
    assert (runs[:, 1] <= r[:, 1]).all() and (runs[:, 1] + runs[:, 3] >= r[:, 1] + r[:, 3]).all()
    assert (runs[:, [0, 2, 4]] == r[:, [0, 2, 4]]).all()
    assert (runs[:, 3] <= core.RUN_MAX_WIDTH).all()


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    rgb, _ = tissue_blocks(1536, 2048, seed=11)
    return {
        mpp: write_pyramidal_tiff(root / f"s{mpp}.tif", rgb, mpp=mpp, compression="zlib")
        for mpp in (0.5, 0.499)
    }


def _read_all(path, regions, runs, mpp=0.5):
    dataset = core.SlideRegions(lambda: [Slide(path)], regions, mpp, runs=runs)
    return np.stack([dataset[i] for i in range(len(dataset))])


@pytest.mark.parametrize("slide_mpp", [0.5, 0.499])
def test_patches_cut_from_runs_equal_patches_read_alone(slides, slide_mpp):
    regions = hovernet_regions(2048, 1536)
    alone = _read_all(slides[slide_mpp], regions, None)
    cut = _read_all(slides[slide_mpp], regions, core.plan_runs(regions))
    diff = np.abs(cut.astype(int) - alone.astype(int))
    if slide_mpp == 0.5:  # the level's own pixels: copied, identical
        assert diff.max() == 0
    else:  # resampled: the same filter at the same places, rounding aside
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_each_pixel_is_read_about_once(slides, monkeypatch):
    regions = hovernet_regions(2048, 1536)
    area = {"px": 0}
    real = Slide.read_region

    def counting(self, x, y, w, h, mpp):
        area["px"] += w * h
        return real(self, x, y, w, h, mpp)

    monkeypatch.setattr(Slide, "read_region", counting)
    _read_all(slides[0.5], regions, None)
    per_patch = area["px"]
    area["px"] = 0
    runs = core.plan_runs(regions)
    _read_all(slides[0.5], regions, runs)
    once = area["px"]
    rows = np.unique(runs, axis=0)
    assert once == int((rows[:, 3] * rows[:, 4]).sum())  # each run read once
    # In x each pixel of a row is read once: 13 patches of 256 px every 164 px are
    # 3328 px of reads per patch, 2224 px as one run (1.5 x fewer). The overlap in y
    # (rows are separate runs) is left to the decoded-tile cache (tile_cache_bytes).
    assert per_patch / once > 1.45

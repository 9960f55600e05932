"""The one pyramidal-TIFF writer: levels, resolution, tiles streamed or from arrays."""

import numpy as np
import pytest
from histoflow.slide import open_slide
from histoflow.synthetic.writers import TiledLevel, halvings, write_slide


def test_halvings_stop_at_twice_the_smallest_level():
    rgb = np.zeros((1200, 1000, 3), np.uint8)
    assert [lv.shape[:2] for lv in halvings(rgb, 256)] == [(1200, 1000), (600, 500)]


def test_arrays_and_streamed_tiles_give_the_same_slide(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (512, 768, 3), np.uint8)
    tiles = (rgb[y : y + 256, x : x + 256] for y in range(0, 512, 256) for x in range(0, 768, 256))
    from_array = write_slide(tmp_path / "a.tif", rgb, 0.5, compression="zlib")
    streamed = write_slide(
        tmp_path / "b.tif", [TiledLevel((512, 768), tiles)], 0.5, compression="zlib"
    )
    with open_slide(from_array) as a, open_slide(streamed) as b:
        assert a.mpp == pytest.approx(0.5) and a.dimensions == (768, 512)
        assert np.array_equal(a.read_region(0, 0, 768, 512, 0.5), rgb)
        assert np.array_equal(b.read_region(0, 0, 768, 512, 0.5), rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]


def test_other_suffixes_are_plain_images(tmp_path):
    rgb = np.full((40, 60, 3), 200, np.uint8)
    with open_slide(write_slide(tmp_path / "s.png", rgb, 0.5), mpp=0.5) as s:
        assert s.format == "image" and s.dimensions == (60, 40)

"""Slide reader: OpenSlide formats and plain images behind one interface."""

import numpy as np
import openslide
import pytest
from histoflow.errors import SlideError
from histoflow.slide import open_slide
from histoflow.synthetic.tissue import tissue_blocks
from histoflow.synthetic.writers import write_png, write_pyramidal_tiff
from PIL import Image


@pytest.fixture(scope="module")
def blocks():
    return tissue_blocks(1200, 1000, seed=1)


def test_demo_svs_metadata(demo_slide):
    with open_slide(demo_slide, sample="cmu") as s:
        assert s.format == "aperio"
        assert s.dimensions == (2220, 2967)
        assert s.mpp == pytest.approx(0.499, abs=1e-3) and s.mpp_source == "file"


def test_level0_read_matches_openslide(demo_slide):
    with open_slide(demo_slide) as s:
        ours = s.read_region(300, 700, 64, 48, s.mpp)
    ref = openslide.OpenSlide(str(demo_slide)).read_region((300, 700), 0, (64, 48))
    assert np.array_equal(ours, np.asarray(ref.convert("RGB")))


def test_outside_slide_is_background(demo_slide):
    with open_slide(demo_slide) as s:
        w, h = s.dimensions
        region = s.read_region(w - 10, h - 10, 30, 30, s.mpp)
        inside = s.read_region(w - 10, h - 10, 10, 10, s.mpp)
    assert region.shape == (30, 30, 3)
    assert np.array_equal(region[:10, :10], inside)
    assert (region[10:, :] == 255).all() and (region[:, 10:] == 255).all()


def test_sheet_mpp_overrides_file(demo_slide):
    with open_slide(demo_slide, mpp=0.25) as s:
        assert s.mpp == 0.25 and s.mpp_source == "sheet"
        assert s.size_at(0.5) == (1110, 1484)


def test_png_needs_sheet_mpp(tmp_path, blocks):
    png = write_png(tmp_path / "roi.png", blocks[0])
    with pytest.raises(SlideError, match=r"sample 'roi'.*roi\.png.*'mpp' column"):
        open_slide(png, sample="roi")
    with open_slide(png, sample="roi", mpp=0.5) as s:
        assert s.dimensions == (1000, 1200) and s.format == "image"
        half = s.read_region(0, 0, 500, 600, 1.0)
    ref = np.asarray(Image.fromarray(blocks[0]).resize((500, 600), Image.Resampling.BILINEAR))
    assert np.abs(half.astype(int) - ref).max() <= 1


def test_pyramid_level_choice_and_resampling(tmp_path, blocks):
    tif = write_pyramidal_tiff(tmp_path / "s.tif", blocks[0], mpp=0.5)
    with open_slide(tif) as s:
        assert s.format == "generic-tiff" and s.mpp == pytest.approx(0.5)
        assert s.level_count >= 2
        assert s.best_level(2.0) == 1 and s.best_level(3.0) == 1 and s.best_level(1.0) == 0
        # 1.5 µm/px has no level: read from level 1 (1.0 µm/px) and resample.
        region = s.read_region(0, 0, 200, 200, 1.5)
    ref = np.asarray(Image.fromarray(blocks[0][:600, :600]).resize((200, 200), Image.BOX))
    # JPEG tiles + a different resampling path: compare means, not exact bytes.
    assert np.abs(region.astype(float) - ref).mean() < 6


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda p: p, "slide file not found"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (p.write_bytes(b"this is not an image" * 10), p)[1], "not a plain image either"),
    ],
)
def test_bad_files_name_sample_and_path(tmp_path, make, pattern):
    path = make(tmp_path / "broken.svs")
    with pytest.raises(SlideError, match=rf"sample 'S1', file '.*broken\.svs': .*{pattern}"):
        open_slide(path, sample="S1")


def test_truncated_svs_is_reported(tmp_path, demo_slide):
    cut = tmp_path / "cut.svs"
    cut.write_bytes(demo_slide.read_bytes()[:200_000])
    with pytest.raises(SlideError, match=r"sample 'cut', file '.*cut\.svs'"):
        s = open_slide(cut, sample="cut")
        s.thumbnail(8.0)

"""Reads at the model's resolution put every pixel where it belongs (issue 16, item 4).

Slides of Gaussian dots at known sub-pixel positions (histoflow.synthetic.fiducials),
every pyramid level rendered exactly, at scanner resolutions that are and are not
integer multiples of the model's; patches read as the inference grid reads them must
show every dot within 0.1 model px of its true position.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from histoflow.slide import open_slide
from histoflow.synthetic.fiducials import locate_dots, read_errors, write_fiducial_slide

SIZE = (2048, 1536)
TOLERANCE = 0.1  # model pixels
SLIDE_MPPS = (0.25, 0.2467, 0.3, 0.499, 0.5)
READ_MPPS = (0.25, 0.5, 1.0)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("fiducials")
    made = {}
    for mpp in SLIDE_MPPS:
        # Dots of sigma 1.5 px at the coarsest read, 14 sigma apart: never touching.
        sigma = 1.5 * max(READ_MPPS) / mpp
        path = root / f"dots-{mpp}.tif"
        made[mpp] = (path, write_fiducial_slide(path, SIZE, mpp, 14 * sigma, sigma, seed=3))
    return made


def patch_origins(slide, mpp: float, patch: int) -> list[tuple[int, int]]:
    """Grid corners of the first, a middle and the last patch of the slide at `mpp`."""
    w, h = slide.size_at(mpp)
    last = (max(w - patch, 0), max(h - patch, 0))
    return [(0, 0), (last[0] // 2 + 7, last[1] // 2 + 3), last]


@pytest.mark.parametrize("read_mpp", READ_MPPS)
@pytest.mark.parametrize("slide_mpp", SLIDE_MPPS)
def test_every_dot_within_a_tenth_of_a_model_pixel(slides, slide_mpp, read_mpp):
    path, truth = slides[slide_mpp]
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(slide_mpp, rel=1e-6)
        scale = read_mpp / slide.mpp
        errors = []
        for x, y in patch_origins(slide, read_mpp, 256):
            image = slide.read_region(x, y, 256, 256, read_mpp)
            errors.append(read_errors(image, (x, y), scale, truth))
    errors = np.concatenate(errors)
    assert len(errors) >= 8 and np.isfinite(errors).all()
    assert errors.max() <= TOLERANCE, (errors.max(), errors.mean())


def test_a_whole_slide_read_in_bands_is_exact_too(slides, monkeypatch):
    import histoflow.slide as slide_module

    path, truth = slides[0.2467]
    monkeypatch.setattr(slide_module, "READ_MAX_PIXELS", 300 * 300)
    with open_slide(path) as slide:
        thumb = slide.thumbnail(2.0)
        scale = 2.0 / slide.mpp
    errors = read_errors(thumb, (0, 0), scale, truth)
    assert len(errors) > 50 and errors.max() <= TOLERANCE


def test_nearest_pixel_placement_would_fail(slides):
    """The check can fail: the same slide read without resampling (the level's own
    pixels at a 0.2 % wrong scale) puts dots up to half a pixel off."""
    path, truth = slides[0.499]
    with open_slide(path) as slide:
        native = slide.read_region(0, 0, 1024, 1024, slide.mpp)  # level-0 pixels
    # Read as if those pixels were at 0.5 µm/px (what rounding the scale to 1 does).
    expected = truth.xy / (0.5 / 0.499)
    found = locate_dots(native, expected, radius=4 * truth.sigma)
    inside = np.isfinite(found).all(axis=1)
    assert np.hypot(*(found[inside] - expected[inside]).T).max() > 0.5


@pytest.mark.parametrize("slide_mpp", [0.499, 0.2467])
def test_model_resolution_shape_rounds_up(slides, slide_mpp):
    """The slide's shape at the model's resolution is ceil(level-0 size / scale): the
    last, partly covered row and column are kept (filled with glass beyond the edge)."""
    path, _ = slides[slide_mpp]
    with open_slide(path) as slide:
        for mpp in (0.5, 1.0):
            scale = mpp / slide.mpp
            assert slide.size_at(mpp) == (math.ceil(SIZE[0] / scale), math.ceil(SIZE[1] / scale))

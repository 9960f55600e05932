"""Images as lists of samples: a slide or plain image is one sample, a multi-page TIFF many.

How pages map to samples: a sample-sheet row names one file (one *image*). A TIFF that
OpenSlide does not read as a slide and that holds several full-resolution pages (a
stack of ROIs, a multi-sample export) is one image whose pages are its samples, in
file order; reduced-resolution pages (TIFF NewSubfileType bit 0) are pyramid levels,
not samples. Every page is read through the same `Slide.read_region` as a plain
image, so tiles of page 0 are identical to what `mask_tissue` saw. The sheet `mpp`
applies to every page (plain images carry no reliable resolution).

The slide reader (`histoflow.slide`) is not changed: `PageSlide` wraps one decoded page
in `openslide.ImageSlide` and reuses `Slide`'s resampling.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from histoflow.config import MPP_RANGE
from histoflow.errors import SlideError
from histoflow.plain_tiff import TIFF_SUFFIXES, to_rgb
from histoflow.slide import PLAIN_IMAGE_MAX_PIXELS, Slide, open_slide

log = logging.getLogger(__name__)


def tiff_sample_pages(path: str | os.PathLike) -> list[int]:
    """Indices of the full-resolution pages of a TIFF (its samples); [] if not a TIFF."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return [
                i
                for i, page in enumerate(tif.pages)
                # bit 0 of NewSubfileType marks a reduced-resolution copy (pyramid level).
                if not (int(getattr(page, "subfiletype", 0) or 0) & 1)
            ]
    except (tifffile.TiffFileError, OSError, ValueError):
        return []


def is_page_stack(path: str | os.PathLike) -> bool:
    """True for a TIFF with several full-resolution pages that OpenSlide does not read."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
        return False
    if openslide.OpenSlide.detect_format(str(path)) is not None:
        return False  # a pyramidal (tiled) TIFF or vendor TIFF: one slide
    return len(tiff_sample_pages(path)) > 1


class PageSlide(Slide):
    """One page of a multi-page TIFF behind the `Slide` interface."""

    def __init__(self, rgb: np.ndarray, path, page: int, sample: str | None, mpp: float):
        # Slide.__init__ opens a file; a page is already decoded, so set up the same
        # attributes here and keep Slide's geometry and read_region.
        self.path = Path(path)
        self.sample = sample
        self.page = page
        self.warnings: list[str] = []
        self._osr = openslide.ImageSlide(Image.fromarray(to_rgb(rgb)))
        self.format = "tiff-page"
        if not (mpp is not None and mpp > 0 and math.isfinite(mpp)):
            raise SlideError(
                "multi-page TIFF without resolution: set the 'mpp' column for this sample "
                "in the sample sheet",
                sample,
                str(path),
            )
        low, high = MPP_RANGE
        if not low <= mpp <= high:
            raise SlideError(
                f"sheet field 'mpp': {mpp:g} µm/px is outside what a microscope produces "
                f"({low:g} to {high:g} µm/px)",
                sample,
                str(path),
            )
        self.mpp, self.mpp_source = float(mpp), "sheet"


def _check_page_size(page, index: int, sample: str | None, path) -> None:
    """Refuse a page whose header declares more pixels than a plain image may have
    (it is decoded whole): a decompression bomb or a slide that belongs in a tiled TIFF."""
    height, width = page.shape[:2]
    if width * height > PLAIN_IMAGE_MAX_PIXELS:
        raise SlideError(
            f"TIFF page {index} header declares {width} x {height} px, more than the "
            f"{PLAIN_IMAGE_MAX_PIXELS / 1e6:.0f} Mpx a plain image may have (it is decoded "
            "whole); refused as a possible decompression bomb",
            sample,
            str(path),
        )


def open_samples(
    path: str | os.PathLike, sample: str | None = None, mpp: float | None = None
) -> list[Slide]:
    """The samples of one image: [slide] for slides and single images, one per page for stacks."""
    if not is_page_stack(path):
        return [open_slide(path, sample=sample, mpp=mpp)]
    import tifffile

    pages = tiff_sample_pages(path)
    out = []
    try:
        with tifffile.TiffFile(path) as tif:
            for i in pages:
                _check_page_size(tif.pages[i], i, sample, path)
                out.append(PageSlide(tif.pages[i].asarray(), path, i, sample, mpp))
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise SlideError(f"cannot read TIFF page ({exc})", sample, str(path)) from exc
    log.info("%s: multi-page TIFF, %d pages are the samples of this image", path, len(out))
    return out

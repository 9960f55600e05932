"""One reader for whole-slide images (OpenSlide) and plain images (PNG, JPEG, TIFF).

OpenSlide reads svs, ndpi, mrxs, scn, generic tiled TIFF and more; `openslide.ImageSlide`
gives the same interface for single-resolution images through Pillow. Everything the
workflow reads goes through `Slide.read_region`, which works in pixels at a requested
resolution (µm per pixel), so no caller needs to know the pyramid.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from histoflow.config import MPP_RANGE
from histoflow.errors import SlideError
from histoflow.plain_tiff import TIFF_SUFFIXES, StripTiff, page_geometry

log = logging.getLogger(__name__)

BACKGROUND = (255, 255, 255)
# Extensions of whole-slide formats: a file with one of these that OpenSlide does not
# recognise is reported as a broken slide, not as an unknown image.
SLIDE_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm"}
# A plain image (PNG, JPEG, a TIFF OpenSlide does not read) is decoded whole by Pillow,
# four bytes a pixel; a header declaring more pixels than this (32768 x 32768, 4 GiB
# decoded) is refused before decoding, as a decompression bomb or as an image that
# belongs in a tiled pyramidal TIFF, which OpenSlide reads by tiles. Pillow's own guard
# stays on at the same limit for every other image it opens.
PLAIN_IMAGE_MAX_PIXELS = 1 << 30
Image.MAX_IMAGE_PIXELS = PLAIN_IMAGE_MAX_PIXELS
# A sheet mpp more than this factor from the file's own resolution gets a warning.
MPP_MISMATCH = 2.0
# OpenSlide decodes a whole tile at once (and aborts the process if it cannot allocate
# it); scanners write tiles of 240 to 2048 px a side, so a TIFF tile over 8192 x 8192 px
# is refused before OpenSlide opens the file.
TILE_MAX_PIXELS = 8192 * 8192
# `read_region` reads a level window of at most this many pixels at once (64 MiB as
# RGBA); larger requests (a thumbnail of a slide without a coarse level) go in bands.
READ_MAX_PIXELS = 4096 * 4096
# Target pixels per strip of a thumbnail read (a 4096 px wide thumbnail in 1024-row strips).
THUMBNAIL_STRIP_PIXELS = 4096 * 1024


def tiff_tile_problem(path: str | os.PathLike) -> str | None:
    """Why OpenSlide must not open the TIFF at `path` (a tile too large to decode), or
    None; reads the TIFF headers only (also for a non-TIFF file: None)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            for index, page in enumerate(tif.pages):
                width, height = page.tilewidth, page.tilelength
                if page.is_tiled and width * height > TILE_MAX_PIXELS:
                    return (
                        f"TIFF page {index} has tiles of {width} x {height} px, more than "
                        f"the {TILE_MAX_PIXELS / 1e6:.4g} Mpx a tile may have (decoded "
                        "whole); refused as a possible decompression bomb"
                    )
    except Exception:  # not a TIFF tifffile can parse: OpenSlide decides
        return None
    return None


def image_pixel_problem(path: str | os.PathLike, limit: int, what: str) -> str | None:
    """Why the image at `path` is too large to decode whole (its header declares more
    than `limit` pixels), or None; reads the header only."""
    guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the header only
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, ValueError, SyntaxError):
        return None  # not an image Pillow knows; the reader says so
    finally:
        Image.MAX_IMAGE_PIXELS = guard
    if width * height <= limit:
        return None
    return (
        f"{what} header declares {width} x {height} px, more than the {limit / 1e6:.4g} Mpx "
        "allowed (it would be decoded whole); refused as a possible decompression bomb"
    )


def _mpp_from_properties(props) -> float | None:
    mx = props.get(openslide.PROPERTY_NAME_MPP_X)
    my = props.get(openslide.PROPERTY_NAME_MPP_Y)
    try:
        values = [float(v) for v in (mx, my) if v not in (None, "")]
    except ValueError:
        return None
    values = [v for v in values if math.isfinite(v) and v > 0]
    return float(np.mean(values)) if values else None


class Slide(contextlib.AbstractContextManager):
    """A slide or image opened for reading, with its resolution resolved.

    `mpp` comes from the sheet override when given, else from the file; a slide
    with neither is rejected here, so every later stage can rely on it.
    """

    def __init__(
        self, path: str | os.PathLike, sample: str | None = None, mpp: float | None = None
    ):
        self.path = Path(path)
        self.sample = sample
        self._given = str(path)  # errors name the path as the sheet gave it
        self._check_path()
        self.format = openslide.OpenSlide.detect_format(str(self.path)) or "image"
        self.warnings: list[str] = []
        self._osr = self._open()
        if self.format == "image" and self.path.suffix.lower() in SLIDE_SUFFIXES:
            kind = getattr(self._osr, "_image", None)
            kind = getattr(kind, "format", None) or "plain"
            self.warnings.append(
                f"content is a {kind} image, not a {self.path.suffix} slide; read as a plain image"
            )
        self.mpp, self.mpp_source = self._resolve_mpp(mpp)

    def _error(self, message: str) -> SlideError:
        return SlideError(message, self.sample, self._given)

    def _check_path(self) -> None:
        if not self.path.exists():
            raise self._error("slide file not found")
        if self.path.is_dir() and self.path.suffix.lower() not in (".mrxs",):
            raise self._error("slide path is a directory, not a file")
        if self.path.is_file() and self.path.stat().st_size == 0:
            raise self._error("slide file is empty (0 bytes)")

    def _open(self):
        if self.format != "image" and self.path.is_file():
            problem = tiff_tile_problem(self.path)
            if problem:
                raise self._error(problem)
        try:
            if self.format == "image":
                osr = self._open_plain()
            else:
                osr = openslide.OpenSlide(str(self.path))
            # Touch the first pixel: truncated files often open but fail on read.
            osr.read_region((0, 0), 0, (1, 1))
        except (openslide.OpenSlideError, OSError, ValueError, Image.DecompressionBombError) as exc:
            if self.format == "image" and self.path.suffix.lower() in SLIDE_SUFFIXES:
                what = (
                    f"OpenSlide does not recognise it as a {self.path.suffix} slide "
                    "(truncated or corrupt?) and it is not a plain image either"
                )
            else:
                what = f"cannot read as a {self.format} slide or image"
            raise self._error(f"{what} ({type(exc).__name__}: {exc})") from exc
        return osr

    def _open_plain(self):
        """Pillow for an image it may decode whole; a larger TIFF by strips or tiles."""
        convert = (
            "if it is a real image, convert it to a tiled pyramidal TIFF "
            "(e.g. vips tiffsave --tile --pyramid), which is read by tiles"
        )
        tiff = self.path.suffix.lower() in TIFF_SUFFIXES
        geometry = page_geometry(self.path) if tiff else None
        if geometry and geometry[0] * geometry[1] > PLAIN_IMAGE_MAX_PIXELS:
            width, height, cw, ch = geometry
            if cw * ch > TILE_MAX_PIXELS:
                raise self._error(
                    f"image header declares {width} x {height} px in strips or tiles of "
                    f"{cw} x {ch} px, more than the {TILE_MAX_PIXELS / 1e6:.4g} Mpx one may "
                    f"have (decoded whole); refused as a possible decompression bomb; {convert}"
                )
            return StripTiff(self.path)
        problem = image_pixel_problem(self.path, PLAIN_IMAGE_MAX_PIXELS, "image")
        if problem:
            raise self._error(f"{problem}; {convert}")
        return openslide.ImageSlide(str(self.path))

    def _resolve_mpp(self, mpp: float | None) -> tuple[float, str]:
        low, high = MPP_RANGE
        bounds = f"outside what a microscope produces ({low:g} to {high:g} µm/px)"
        file_mpp = _mpp_from_properties(self._osr.properties)
        if mpp is not None:
            if not (math.isfinite(mpp) and low <= mpp <= high):
                raise self._error(f"sheet field 'mpp': {mpp:g} µm/px is {bounds}")
            if file_mpp is not None and max(mpp / file_mpp, file_mpp / mpp) > MPP_MISMATCH:
                message = (
                    f"sheet field 'mpp' {mpp:g} µm/px is {mpp / file_mpp:.3g} x the file's own "
                    f"{file_mpp:g} µm/px; the sheet value is used: check it"
                )
                log.warning("sample '%s', file '%s': %s", self.sample, self._given, message)
                self.warnings.append(message)
            return float(mpp), "sheet"
        if file_mpp is not None:
            if not low <= file_mpp <= high:
                raise self._error(
                    f"the file's resolution metadata ({openslide.PROPERTY_NAME_MPP_X}) says "
                    f"{file_mpp:g} µm/px, {bounds}; set the 'mpp' column for this sample "
                    "in the sample sheet"
                )
            return file_mpp, "file"
        note = f" ({self.warnings[0]})" if self.warnings else ""
        raise self._error(
            "no resolution metadata (microns per pixel) in the file; "
            f"set the 'mpp' column for this sample in the sample sheet{note}"
        )

    # -- geometry ---------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) at level 0."""
        return tuple(self._osr.dimensions)

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return self._osr.level_count

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of each level."""
        return [tuple(d) for d in self._osr.level_dimensions]

    @property
    def level_downsamples(self) -> list[float]:
        """Level-0 pixels per pixel of each level."""
        return [float(d) for d in self._osr.level_downsamples]

    @property
    def properties(self) -> dict[str, str]:
        """The file's metadata (OpenSlide properties)."""
        return dict(self._osr.properties)

    def size_at(self, mpp: float) -> tuple[int, int]:
        """(width, height) of the whole slide at `mpp`, rounded up so no pixel is lost."""
        scale = mpp / self.mpp
        w, h = self.dimensions
        return math.ceil(w / scale - 1e-9), math.ceil(h / scale - 1e-9)

    def best_level(self, downsample: float) -> int:
        """Highest-resolution-cost-saving level whose downsample does not exceed the target."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-3):
                best = level
        return best

    # -- pixels -----------------------------------------------------------------------
    def read_region(self, x: float, y: float, width: int, height: int, mpp: float) -> np.ndarray:
        """RGB uint8 array (height, width, 3) of the box (x, y, width, height) in pixels at `mpp`.

        Reads from the best pyramid level and resamples to the exact target grid
        (pixel-area convention: target pixel i covers level-0 [i * s, (i + 1) * s) for
        s level-0 pixels per target pixel), so every feature lands within a few
        hundredths of a pixel of its true place at any scale (tests/test_exact_reads.py).
        The level window carries a margin of the filter's reach, so a box read whole or
        in parts gives the same pixels. Areas outside the slide are the background colour.
        """
        if width <= 0 or height <= 0:
            raise ValueError(f"region size must be positive, got {width}x{height}")
        scale = mpp / self.mpp  # level-0 pixels per target pixel
        level = self.best_level(scale)
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        # Requested box in level coordinates (float), then the integer window around it.
        fx0, fy0 = x * scale / ds, y * scale / ds
        fx1, fy1 = (x + width) * scale / ds, (y + height) * scale / ds
        sx, sy = (fx1 - fx0) / width, (fy1 - fy0) / height  # level pixels per target pixel
        # Pillow's antialiased bilinear filter reaches max(s, 1) level pixels either side.
        reach = math.ceil(max(sx, sy, 1.0)) + 1
        ix0, iy0 = max(math.floor(fx0) - reach, 0), max(math.floor(fy0) - reach, 0)
        ix1, iy1 = min(math.ceil(fx1) + reach, lw), min(math.ceil(fy1) + reach, lh)
        if (ix1 - ix0) * (iy1 - iy0) > READ_MAX_PIXELS and max(width, height) > 1:
            return self._read_halves(x, y, width, height, mpp)
        out = Image.new("RGB", (width, height), BACKGROUND)
        # Target pixels that fall inside the slide.
        tx0 = max(0, math.ceil(-fx0 / sx - 1e-9))
        ty0 = max(0, math.ceil(-fy0 / sy - 1e-9))
        tx1 = min(width, math.floor((lw - fx0) / sx + 1e-9))
        ty1 = min(height, math.floor((lh - fy0) / sy + 1e-9))
        if ix1 <= ix0 or iy1 <= iy0 or tx1 <= tx0 or ty1 <= ty0:
            return np.asarray(out)
        window = self._level_window(level, ix0, iy0, ix1, iy1)
        box = (
            fx0 + tx0 * sx - ix0,
            fy0 + ty0 * sy - iy0,
            fx0 + tx1 * sx - ix0,
            fy0 + ty1 * sy - iy0,
        )
        size = (tx1 - tx0, ty1 - ty0)
        corners = [round(b) for b in box]
        if all(abs(b - r) < 1e-6 for b, r in zip(box, corners, strict=True)) and size == (
            corners[2] - corners[0],
            corners[3] - corners[1],
        ):
            part = window.crop(corners)  # the level's own pixels: nothing to resample
        else:
            part = window.resize(size, resample=Image.Resampling.BILINEAR, box=box)
        out.paste(part, (tx0, ty0))
        return np.asarray(out)

    def _level_window(self, level: int, ix0: int, iy0: int, ix1: int, iy1: int) -> Image.Image:
        """RGB of the level pixels [ix0, ix1) x [iy0, iy1), transparent ones as background."""
        ds = self.level_downsamples[level]
        try:
            rgba = self._osr.read_region(
                (round(ix0 * ds), round(iy0 * ds)), level, (ix1 - ix0, iy1 - iy0)
            )
        except openslide.OpenSlideError as exc:
            raise SlideError(
                f"read failed at level {level} ({exc})", self.sample, str(self.path)
            ) from exc
        # OpenSlide marks pixels outside the scanned area transparent.
        window = Image.new("RGB", rgba.size, BACKGROUND)
        window.paste(rgba, mask=rgba.getchannel("A"))
        return window

    def _read_halves(self, x: float, y: float, width: int, height: int, mpp: float):
        """`read_region` of a large box as two halves (rows, or columns of one row)."""
        if height > 1:
            half = height // 2
            parts = [(x, y, width, half), (x, y + half, width, height - half)]
            axis = 0
        else:
            half = width // 2
            parts = [(x, y, half, height), (x + half, y, width - half, height)]
            axis = 1
        return np.concatenate([self.read_region(*box, mpp) for box in parts], axis=axis)

    def use_tile_cache(self, nbytes: int) -> None:
        """Give OpenSlide a decoded-tile cache of `nbytes` for this handle (its default
        is 32 MiB for all handles together), so overlapping rows of patches decode each
        tile once. No-op for plain images."""
        if isinstance(self._osr, openslide.OpenSlide):
            self._osr.set_cache(openslide.OpenSlideCache(int(nbytes)))

    def thumbnail(self, mpp: float) -> np.ndarray:
        """The whole slide at `mpp` as RGB uint8 (height, width, 3), read in strips of
        rows (the same pixels as one read, see `read_region`), so the level window,
        its RGBA copy and the resampled picture are held for a strip, not the slide."""
        w, h = self.size_at(mpp)
        rows = max(1, THUMBNAIL_STRIP_PIXELS // w)
        if rows >= h:
            return self.read_region(0, 0, w, h, mpp)
        out = np.empty((h, w, 3), np.uint8)
        for y in range(0, h, rows):
            n = min(rows, h - y)
            out[y : y + n] = self.read_region(0, y, w, n, mpp)
        return out

    def close(self) -> None:
        """Release the file."""
        self._osr.close()

    def __exit__(self, *exc) -> None:
        self.close()


def open_slide(
    path: str | os.PathLike, sample: str | None = None, mpp: float | None = None
) -> Slide:
    """Open a slide or plain image; `mpp` overrides the file's resolution."""
    return Slide(path, sample=sample, mpp=mpp)

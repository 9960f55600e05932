"""Large plain TIFFs read by strips or tiles through tifffile, never decoded whole.

A TIFF that OpenSlide does not read (stripped, or without pyramid metadata) would go
to Pillow, which decodes the whole image on first access. `StripTiff` gives page 0 of
such a file the part of OpenSlide's interface `histoflow.slide.Slide` uses, and
decodes only the strips or tiles a region touches (tifffile's zarr view). The decoded
size of one strip or tile is bounded by the caller (histoflow.slide), so a header that
declares one huge strip (a decompression bomb) is refused before any decoding.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

TIFF_SUFFIXES = (".tif", ".tiff")


def to_rgb(page: np.ndarray) -> np.ndarray:
    """A decoded image as RGB uint8: gray is repeated, alpha composited on white, 16 bit scaled."""
    a = np.asarray(page)
    if a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535
    elif a.dtype.kind == "f":
        a = np.clip(a, 0, 1) * 255 + 0.5
    a = a.astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"page of shape {page.shape} is not a gray, RGB or RGBA image")
    if a.shape[2] == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255
        a = (a[..., :3] * alpha + 255 * (1 - alpha) + 0.5).astype(np.uint8)
    return a


def page_geometry(path: str | os.PathLike) -> tuple[int, int, int, int] | None:
    """(width, height, chunk width, chunk height) of page 0 of a TIFF, or None when the
    file is not a TIFF tifffile reads. A chunk is a tile, or a strip of rows."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            width, height = int(page.imagewidth), int(page.imagelength)
            if page.is_tiled:
                return width, height, int(page.tilewidth), int(page.tilelength)
            rows = int(page.rowsperstrip or height)
            return width, height, width, min(rows, height)
    except Exception:  # not a TIFF tifffile can parse: the caller's reader decides
        return None


class StripTiff:
    """Page 0 of a plain TIFF behind the subset of `openslide.OpenSlide` Slide uses."""

    def __init__(self, path: str | os.PathLike):
        import tifffile
        import zarr

        self._tif = tifffile.TiffFile(path)
        page = self._tif.pages[0]
        self._store = page.aszarr()
        self._array = zarr.open_array(self._store, mode="r")
        if self._array.ndim == 3 and self._array.shape[2] not in (3, 4):
            raise ValueError(f"TIFF page of shape {self._array.shape} is not gray, RGB or RGBA")
        self.dimensions = (int(page.imagewidth), int(page.imagelength))
        self.level_count = 1
        self.level_dimensions = (self.dimensions,)
        self.level_downsamples = (1.0,)
        self.properties: dict[str, str] = {}

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        """RGBA image of `size` at level-0 `location`; outside the image is transparent."""
        if level != 0:
            raise ValueError(f"a plain TIFF has one level, not level {level}")
        (x, y), (w, h) = location, size
        width, height = self.dimensions
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, width), min(y + h, height)
        out = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        if x1 > x0 and y1 > y0:
            rgb = to_rgb(self._array[y0:y1, x0:x1])
            out.paste(Image.fromarray(rgb).convert("RGBA"), (x0 - x, y0 - y))
        return out

    def close(self) -> None:
        """Release the file."""
        self._store.close()
        self._tif.close()

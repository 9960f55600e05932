"""Slide pictures for the report: resized once and embedded as JPEG data URIs.

The page references each picture by its index in one list, so a picture shown in
the gallery and in the table is in the file once.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from histoflow.errors import HistoflowError
from histoflow.paths import SamplePaths

# Gallery picture kinds -> the SamplePaths file, in the order the page offers them.
PICTURES = {
    "mask": "mask_overlay_png",
    "heatmap": "heatmap_png",
    "objects": "instances_overlay_png",
}
JPEG_QUALITY = 80


class PictureError(HistoflowError):
    """A picture of a slide cannot be read; the message names the file."""


def data_uri(path: str | Path, max_side: int) -> str:
    """The picture at `path`, its longest side at most `max_side` px, as a JPEG data URI.

    Same pixels give the same bytes (PIL's JPEG encoder is deterministic)."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    except (OSError, ValueError) as exc:
        raise PictureError(f"file '{path}': not a readable picture ({exc})") from exc
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def slide_pictures(paths: SamplePaths, max_side: int) -> dict[str, str]:
    """Kind -> data URI of the pictures the slide's stages wrote."""
    found = {}
    for kind, name in PICTURES.items():
        path = getattr(paths, name)
        if path.is_file():
            found[kind] = data_uri(path, max_side)
    return found

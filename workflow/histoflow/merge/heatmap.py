"""A heatmap picture of one probability map over the slide, for the report.

Reads maps.zarr band by band with a stride (never the whole map), colour-maps the
head's first probability channel (or the last channel of a softmax head, usually
the foreground class) and blends it over a slide thumbnail where patches were run.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import zarr
from PIL import Image

from histoflow.io.atomic import atomic_output
from histoflow.io.maps_zarr import COVERAGE, MapsZarr, open_maps
from histoflow.slide import open_slide

# A perceptually ordered ramp (dark blue -> yellow), 5 stops of viridis.
RAMP = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32
)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in 0-1 -> RGB uint8 along RAMP."""
    pos = np.clip(values, 0, 1) * (len(RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(RAMP) - 2)
    frac = (pos - lo)[..., None]
    return (RAMP[lo] * (1 - frac) + RAMP[lo + 1] * frac).astype(np.uint8)


def pick_head(maps: MapsZarr) -> tuple[str, int]:
    """The first probability head and the channel to show."""
    for head in maps.heads:
        if head.get("activation") in ("sigmoid", "softmax"):
            channel = head["channels"] - 1 if head["activation"] == "softmax" else 0
            return head["name"], channel
    head = maps.heads[0]
    return head["name"], 0


def strided(array: zarr.Array, step: int, band: int, channel: int | None = None) -> np.ndarray:
    """array[::step, ::step(, channel)], read one band of rows at a time.

    Each band's kept rows are copied out, so the band buffer is freed before the next
    read: a view would keep every band alive and memory would grow with slide height.
    """
    h = array.shape[0]
    rows = []
    for y0 in range(0, h, band):
        rows_sel = slice(y0, min(h, y0 + band))
        block = array[rows_sel] if channel is None else array[rows_sel, :, channel]
        rows.append(np.array(block[(-y0) % step :: step, ::step], copy=True))
        del block
    return np.concatenate(rows)


def render_heatmap(
    maps_path: str | Path,
    slide_path: str | Path,
    out_png: str | Path,
    mpp_override: float | None = None,
    max_side: int = 1024,
    alpha: float = 0.55,
) -> Path:
    """Write `out_png`: the maps' first probability channel blended over the slide."""
    maps = open_maps(maps_path)
    head, channel = pick_head(maps)
    h, w = maps.shape
    step = max(1, math.ceil(max(h, w) / max_side))
    band = max(step, (maps.array(head).chunks[0] // step) * step)
    values = maps.decode(head, strided(maps.array(head), step, band, channel))
    covered = strided(maps.array(COVERAGE), step, band) > 0
    with open_slide(slide_path, mpp=mpp_override) as slide:
        thumb = slide.read_region(0, 0, values.shape[1], values.shape[0], maps.mpp * step)
    heat = colormap(values.astype(np.float32))
    out = thumb.astype(np.float32)
    out[covered] = (1 - alpha) * out[covered] + alpha * heat[covered]
    with atomic_output(out_png) as tmp:
        Image.fromarray(out.astype(np.uint8)).save(tmp, format="PNG")
    return Path(out_png)

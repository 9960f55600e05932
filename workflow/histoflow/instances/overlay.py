"""QC picture: a region of the slide with object outlines coloured by class.

The region is the square window (at model resolution) that holds the most object
centroids, so the picture shows the densest tissue rather than a corner of glass.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import shapely
from PIL import Image, ImageDraw

from histoflow.export.instances import RGB, class_color
from histoflow.io.atomic import atomic_output
from histoflow.io.instance_table import InstanceTable

Reader = Callable[[int, int, int, int], np.ndarray]  # (x, y, w, h) model px -> RGB


def densest_window(
    cx: np.ndarray, cy: np.ndarray, shape: tuple[int, int], size: int
) -> tuple[int, int, int, int]:
    """(x0, y0, w, h) in model pixels of the size x size window with most centroids
    (model-pixel coordinates); the slide centre when there are none."""
    H, W = shape
    w, h = min(size, W), min(size, H)
    if len(cx) == 0:
        return (W - w) // 2, (H - h) // 2, w, h
    step = max(1, size // 16)
    nx, ny = -(-W // step), -(-H // step)
    hist = np.zeros((ny + 1, nx + 1), np.int64)
    ix = np.clip((cx // step).astype(int), 0, nx - 1)
    iy = np.clip((cy // step).astype(int), 0, ny - 1)
    np.add.at(hist, (iy + 1, ix + 1), 1)
    sat = hist.cumsum(0).cumsum(1)  # summed-area table
    kx, ky = max(1, w // step), max(1, h // step)
    sums = sat[ky:, kx:] - sat[:-ky, kx:] - sat[ky:, :-kx] + sat[:-ky, :-kx]
    by, bx = np.unravel_index(int(np.argmax(sums)), sums.shape)  # first maximum: stable
    x0 = int(min(max(bx * step, 0), W - w))
    y0 = int(min(max(by * step, 0), H - h))
    return x0, y0, w, h


def draw_outlines(
    rgb: np.ndarray,
    geoms: np.ndarray,
    colors: list[tuple[int, int, int]],
    origin: tuple[float, float],
    scale: float,
    width: int = 1,
    legend: list[tuple[str, tuple[int, int, int]]] = (),
) -> Image.Image:
    """Draw level-0 polygon outlines on `rgb`, whose pixel (0, 0) is model pixel
    `origin` (x, y)."""
    img = Image.fromarray(rgb).convert("RGB")
    draw = ImageDraw.Draw(img)
    ox, oy = origin
    for geom, color in zip(geoms, colors, strict=True):
        for poly in shapely.get_parts(geom):
            for ring in (poly.exterior, *poly.interiors):
                xy = np.asarray(ring.coords) / scale - (ox, oy)
                draw.line([tuple(p) for p in xy.tolist()], fill=color, width=width)
    y = 4
    for name, color in legend:
        draw.rectangle([4, y, 16, y + 12], fill=color, outline=(0, 0, 0))
        draw.text((20, y), name, fill=(0, 0, 0))
        y += 16
    return img


def _class_colors(table: InstanceTable, task: str, class_id: int) -> RGB:
    classes = table.task_classes(task)
    name = classes[class_id]["name"] if class_id < len(classes) else None
    return class_color(table, task, name, class_id)


def render(
    table: InstanceTable, read: Reader, size: int
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """The overlay picture of the densest window, and that window (model pixels)."""
    scale = float(table.meta["scale"])
    H, W = table.meta["shape"]
    cols = table.read(["centroid_x", "centroid_y"])
    cx = cols["centroid_x"].to_numpy() / scale
    cy = cols["centroid_y"].to_numpy() / scale
    x0, y0, w, h = densest_window(cx, cy, (H, W), size)
    X0, Y0, X1, Y1 = x0 * scale, y0 * scale, (x0 + w) * scale, (y0 + h) * scale
    rows = table.read(
        ["task", "class_id", "contour"],
        filters=[
            ("bbox_x1", ">=", X0),
            ("bbox_x0", "<=", X1),
            ("bbox_y1", ">=", Y0),
            ("bbox_y0", "<=", Y1),
        ],
    )
    keys = list(zip(rows["task"].to_pylist(), rows["class_id"].to_pylist(), strict=True))
    palette = {key: _class_colors(table, *key) for key in set(keys)}
    geoms = shapely.from_wkb(rows["contour"].to_numpy(zero_copy_only=False))
    legend = [
        (table.task_classes(t)[k]["name"], palette[t, k])
        for t, k in sorted(palette)
        if k < len(table.task_classes(t))
    ]
    rgb = read(x0, y0, w, h)
    width = 2 if size >= 1024 else 1
    colors = [palette[key] for key in keys]
    return draw_outlines(rgb, geoms, colors, (x0, y0), scale, width, legend), (x0, y0, w, h)


def write(img: Image.Image, path: str | Path) -> Path:
    """Save the picture as PNG, atomically."""
    with atomic_output(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)

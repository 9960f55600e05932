"""Heatmaps of a tile classifier's scores, from the tile-grid map (map.zarr).

The map is read by `histoflow.tiles.strategies.read_grid_map`, its one reader.

One map pixel is one grid cell (`cell_mpp` µm, `cell_level0` level-0 px). The OME-TIFF
goes through the export stage's writer (`histoflow.export.ometiff`): the map is handed
to it as a one-head maps store (head `scores`, softmax/sigmoid, the card's classes and
colours), so it carries the same channel names, colours and physical size as dense
heatmaps. The PNG is a picture for people: each covered cell coloured by the
score-weighted mix of class colours, over the mask_tissue thumbnail.

Multi-page images: samples are stacked top to bottom in page order with one empty cell
row between them (both files).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from histoflow.errors import HistoflowError
from histoflow.export.instances import parse_color
from histoflow.io.atomic import atomic_output, job_dir
from histoflow.io.maps_zarr import COVERAGE, MapsZarrWriter
from histoflow.merge.canvas import Region
from histoflow.tiles.strategies import read_grid_map

PNG_MAX_SIDE = 1024


def _classifier_attrs(attrs: dict) -> list[dict]:
    if attrs.get("output_type") != "classifier":
        raise HistoflowError(
            f"sample '{attrs.get('sample')}': model '{attrs.get('model')}' is not a classifier "
            f"(output type '{attrs.get('output_type')}'); config field 'tiles.heatmap' "
            "applies to classifiers only"
        )
    return attrs["classes"]


def export_tile_ometiff(map_path, out_path, sample: str, tmpdir=None) -> None:
    """Pyramidal OME-TIFF, one uint8 channel per class (round(255 * score))."""
    from histoflow.export.ometiff import export_ometiff

    scores, coverage, attrs = read_grid_map(map_path)
    classes = _classifier_attrs(attrs)
    head = {"name": "scores", "channels": len(classes), "activation": "softmax"}
    maps_attrs = {
        "sample": sample,
        "shape": list(coverage.shape),
        "mpp": attrs["cell_mpp"],
        "slide_mpp": attrs["level0_mpp"],
        "scale": attrs["cell_level0"],
        "heads": [head],
        # The export writer takes class names and colours from a post-processing task.
        "model": {"postprocess": [{"heads": {"probability": "scores"}, "classes": classes}]},
    }
    with job_dir("grid", sample, tmpdir) as td:
        _write_maps(Path(td) / "maps.zarr", scores, coverage, maps_attrs)
        export_ometiff(Path(td) / "maps.zarr", out_path, sample, tmpdir=td)


def _write_maps(path: Path, scores: np.ndarray, coverage: np.ndarray, attrs: dict) -> None:
    """The grid map as a one-head maps store, in one band (tile-grid maps are small)."""
    height, width = coverage.shape
    channels = {"scores": scores.shape[2]}
    writer = MapsZarrWriter(path, (height, width), channels, max(1, height), attrs)
    for _, buffers in writer.segments(Region(0, height, 0, width)):
        buffers["scores"][...] = scores
        buffers[COVERAGE][...] = coverage
    writer.close()


def render_png(
    scores, coverage, classes, thumbnail=None, extent=None, max_side=PNG_MAX_SIDE
) -> np.ndarray:
    """RGB picture: class colours mixed by score per covered cell, blended on the thumbnail.

    `extent` (width, height) is the slide's size in cells (the grid may overhang the
    slide edge); the thumbnail is scaled to it so tissue and cells line up.
    """
    colors = np.array([parse_color(c.get("color"), i) for i, c in enumerate(classes)], np.float32)
    h, w = coverage.shape
    cell = max(1, max_side // max(h, w))
    rgb = np.einsum("hwc,ck->hwk", np.clip(scores, 0, 1), colors)
    rgb = np.repeat(np.repeat(rgb, cell, 0), cell, 1)
    covered = np.repeat(np.repeat(coverage > 0, cell, 0), cell, 1)[..., None]
    base = np.full(rgb.shape, 255.0, np.float32)
    if thumbnail is not None:
        ew, eh = extent or (w, h)
        size = (min(rgb.shape[1], round(ew * cell)), min(rgb.shape[0], round(eh * cell)))
        small = Image.fromarray(thumbnail[..., :3]).resize(size, Image.Resampling.BILINEAR)
        base[: size[1], : size[0]] = np.asarray(small, np.float32)
    out = np.where(covered, 0.35 * base + 0.65 * rgb, base)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def export_tile_png(map_path, out_path, thumbnail_png=None) -> None:
    """A PNG picture of the classifier's scores over the slide's thumbnail."""
    scores, coverage, attrs = read_grid_map(map_path)
    classes = _classifier_attrs(attrs)
    thumbnail, extent = None, None
    # The mask_tissue thumbnail shows page 0; a stack of pages is drawn on white.
    if thumbnail_png and len(attrs.get("pages", [])) <= 1:
        with Image.open(thumbnail_png) as img:
            thumbnail = np.asarray(img.convert("RGB"))
        cell = float(attrs["cell_level0"])
        extent = (attrs["level0_width"] / cell, attrs["level0_height"] / cell)
    picture = render_png(scores, coverage, classes, thumbnail, extent)
    with atomic_output(out_path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")

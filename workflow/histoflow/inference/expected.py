"""Bytes a slide's dense stage stores will take, known before they are written.

The grid fixes the size of raw.zarr (patches x output pixels x channels x dtype) and of
the covered part of maps.zarr (covered pixels x stored bytes per pixel), uncompressed;
on disk the codecs shrink them (a 40x slide with a HoVer-Net-shaped model: 10.7 GB and
6.9 GB expected, 2.6 GB and 1.0 GB written). Before mask_tissue has run the grid
is the whole slide's (an upper bound); once the mask exists it is the grid
infer_patches will use. The dry run prints these per slide (workflow/rules/common.smk)
so a cohort's disk needs are known before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histoflow.inference.grid import covered_pixels, max_overlap
from histoflow.inference.runner import InferenceOptions, plan_grid
from histoflow.io.maps_zarr import bytes_per_pixel, store_encodings
from histoflow.io.mask_files import read_mask
from histoflow.io.space import free_bytes
from histoflow.models.card import ModelCard
from histoflow.paths import SamplePaths
from histoflow.slide import open_slide


@dataclass(frozen=True)
class ExpectedBytes:
    """Uncompressed sizes of one slide's raw.zarr and maps.zarr, from its grid."""

    sample: str
    patches: int
    from_mask: bool  # False: the whole slide's grid, before mask_tissue has run
    raw_bytes: int
    maps_bytes: int


def expected_bytes(
    sample: str,
    slide_path: str | Path,
    card: ModelCard,
    inference: dict,
    merge_encoding: str,
    mpp: float | None = None,
    results: str = "results",
) -> ExpectedBytes:
    """The grid of `sample` (its mask's when mask_tissue has run) and the store sizes."""
    opts = InferenceOptions.from_config(inference)
    paths = SamplePaths(sample, results)
    mask = mask_meta = None
    from_mask = Path(paths.mask_png).exists() and Path(paths.mask_json).exists()
    if from_mask:
        mask, mask_meta = read_mask(paths.mask_png, paths.mask_json)
    slide = open_slide(slide_path, sample=sample, mpp=mpp)
    try:
        grid, shape = plan_grid(slide, card, opts, mask, mask_meta)
    finally:
        slide.close()
    channels = {str(h["name"]): int(h["channels"]) for h in card.heads}
    itemsize = np.dtype(opts.dtype).itemsize
    oh, ow = card.patch_output
    raw = len(grid.boxes) * oh * ow * itemsize * sum(channels.values())
    overlap = max_overlap(card.patch_output, grid.stride) if len(grid.boxes) else 0
    encodings = store_encodings(card.heads, merge_encoding, overlap)
    maps = covered_pixels(grid.boxes, shape) * bytes_per_pixel(encodings, channels)
    return ExpectedBytes(sample, len(grid.boxes), from_mask, raw, maps)


def format_table(rows: list[ExpectedBytes], errors: dict[str, str], results: str) -> str:
    """The dry run's table: one line per slide, totals and the free space of results/."""
    mb = 1e6
    lines = [
        "expected bytes per slide (uncompressed: raw.zarr's patches, maps.zarr's covered "
        "pixels; on disk they compress; '<=' = whole-slide grid, mask_tissue has not run "
        "yet):",
        f"  {'sample':<24} {'patches':>9} {'raw.zarr MB':>13} {'maps.zarr MB':>13}",
    ]
    for row in rows:
        bound = "  " if row.from_mask else "<="
        lines.append(
            f"  {row.sample:<24} {bound}{row.patches:>7} {row.raw_bytes / mb:>13.1f} "
            f"{row.maps_bytes / mb:>13.1f}"
        )
    for sample, why in errors.items():
        lines.append(f"  {sample:<24} not estimated: {why}")
    raw = sum(r.raw_bytes for r in rows)
    maps = sum(r.maps_bytes for r in rows)
    lines.append(
        f"  {'total':<24} {sum(r.patches for r in rows):>9} {raw / mb:>13.1f} "
        f"{maps / mb:>13.1f}   ({free_bytes(results) / mb:.0f} MB free at '{results}')"
    )
    return "\n".join(lines)

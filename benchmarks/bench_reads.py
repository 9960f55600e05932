"""Reading the patches of an overlapping grid: per patch vs one read per run of a row.

The tissue patches of a HoVer-Net grid (256 px read for 164 px of output, stride 164,
each pixel inside 2.4 patches) on a 16384² mosaic, read by `SlideRegions` in one
process three ways: each patch on its own (OpenSlide's default 32 MiB tile cache),
cut from runs of neighbouring patches (`plan_runs`), and runs with the decoded-tile
cache sized to two rows of patches (`tile_cache_bytes`). Prints wall, patches/s and
the pixels requested from the slide.

    .venv/bin/python benchmarks/bench_reads.py [--slide /tmp/peer/data/mosaic16k.svs]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

OUT = REPO / "benchmarks" / "out" / "reads"


def tissue_regions(slide_path: Path, mpp: float) -> np.ndarray:
    from histoflow.inference.grid import make_grid
    from histoflow.slide import open_slide
    from histoflow.tissue import MaskOptions, compute_tissue_mask

    with open_slide(slide_path) as slide:
        result = compute_tissue_mask(slide, MaskOptions.from_config())
        w, h = slide.size_at(mpp)
        scale = mpp / slide.mpp
        sx, sy = result.meta["mask_scale"]
        to_mask = (scale / sx, scale / sy)  # as infer_patches' plan_grid
    grid = make_grid((h, w), (256, 256), (164, 164), (164, 164), result.mask, to_mask, 0.0)
    boxes = grid.input_boxes()
    return np.column_stack(
        [np.zeros(len(boxes), np.int64), boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]
    )


def read_all(slide_path: Path, regions, mpp, runs, cache) -> tuple[float, int]:
    from histoflow.inference import core

    dataset = core.SlideRegions(
        core.slide_opener(str(slide_path), None, None), regions, mpp, runs, cache
    )
    t0 = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    wall = time.perf_counter() - t0
    boxes = regions if runs is None else np.unique(runs, axis=0)
    return wall, int((boxes[:, 3] * boxes[:, 4]).sum())


def main() -> None:
    from histoflow.inference import core
    from histoflow.slide import open_slide
    from histoflow.synthetic.mosaic import write_mosaic_tiff

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slide", type=Path, help="default: histoflow's own 16384² mosaic")
    p.add_argument("--mpp", type=float, default=0.5)
    args = p.parse_args()
    slide = args.slide
    if slide is None:
        OUT.mkdir(parents=True, exist_ok=True)
        slide = OUT / "mosaic-16384.tif"
        if not slide.exists():
            write_mosaic_tiff(slide, REPO / "data" / "cmu_small_region.svs", size=16384)
    regions = tissue_regions(slide, args.mpp)
    runs = core.plan_runs(regions)
    with open_slide(slide) as s:
        cache = core.tile_cache_bytes(s, args.mpp, 256)
    cases = {
        "per patch": (None, None),
        "runs": (runs, None),
        f"runs + tile cache {cache / 2**20:.0f} MiB": (runs, cache),
    }
    print(f"\n{slide.name}: {len(regions)} tissue patches, 256 -> 164 px, at {args.mpp} µm/px\n")
    print("| read | wall s | patches/s | Mpx requested |")
    print("|---|---|---|---|")
    for name, (r, c) in cases.items():
        wall, px = read_all(slide, regions, args.mpp, r, c)
        print(f"| {name} | {wall:.1f} | {len(regions) / wall:.0f} | {px / 1e6:.0f} |")


if __name__ == "__main__":
    main()

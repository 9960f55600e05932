"""A synthetic cohort's per-slide files, as the stages write them (CONTRACTS.md), for
the report's tests and its benchmark: mask files and pictures, instance tables with
known class counts and areas, benchmark files, and error logs of failed slides.

Slide i is ok unless listed in `failed` (an ERROR line in its mask_tissue log, no
files) or `blank` (an empty mask, no objects); `sheet_mpp` slides take their mpp
from the sheet, `large` slides are 10x the others in each side, `dense` slides have
10x the objects per mm². Densities of the others vary by a few percent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from histoflow.io.instance_table import Objects, build_table, write_instance_table
from histoflow.paths import SamplePaths, benchmark_path, log_path
from histoflow.synthetic.tissue import tissue_blocks
from histoflow.tissue import overlay

CLASSES = [
    {"name": "Tumour", "color": "#e41a1c"},
    {"name": "Stroma", "color": "#4daf4a"},
    {"name": "Lymphocyte", "color": "#377eb8"},
]
MPP = 0.5
# Level-0 pixels per thumbnail pixel.
SCALE = 16
RULES = {"mask_tissue": 2.0, "infer_patches": 30.0, "merge_patches": 5.0, "extract_instances": 8.0}


@dataclass
class SyntheticCohort:
    """Which slides of the cohort are special; slides are named `slide-000`, ...

    `objects_per_mm2` is the true density of every ok slide, split over CLASSES by
    `class_shares`."""

    n: int
    failed: tuple[int, ...] = ()
    blank: tuple[int, ...] = ()
    sheet_mpp: tuple[int, ...] = ()
    large: tuple[int, ...] = ()
    dense: tuple[int, ...] = ()
    objects_per_mm2: float = 2000.0
    class_shares: tuple[float, ...] = (0.5, 0.3, 0.2)
    thumbnail: tuple[int, int] = (180, 240)
    seed: int = 0
    samples: list[str] = field(init=False)

    def __post_init__(self):
        self.samples = [f"slide-{i:03d}" for i in range(self.n)]


def _objects(rng, counts: list[int], mask: np.ndarray) -> Objects:
    """Objects at random tissue pixels; areas lognormal around 40 µm²."""
    n = sum(counts)
    ys, xs = np.nonzero(mask)
    pick = rng.integers(0, len(ys), n)
    centre = np.stack([xs[pick], ys[pick]], axis=1) * SCALE + SCALE / 2.0
    area = rng.lognormal(np.log(40.0 / MPP**2), 0.3, n)
    half = np.sqrt(area)[:, None] / 2
    corner = np.floor(centre[:, ::-1] / 4).astype(np.int64)
    return Objects(
        class_id=np.repeat(np.arange(len(counts)), counts).astype(np.int32),
        probability=np.full(n, 0.9, np.float32),
        centroid=centre,
        bbox=np.concatenate([centre - half, centre + half], axis=1),
        area=area,
        contour=np.array([b""] * n, dtype=object),
        corner=corner,
    )


def _objects_picture(rgb: np.ndarray, objs: Objects) -> np.ndarray:
    out = rgb.copy()
    colours = [tuple(int(c["color"][i : i + 2], 16) for i in (1, 3, 5)) for c in CLASSES]
    px = (objs.centroid / SCALE).astype(int)
    for (x, y), k in zip(px, objs.class_id):
        out[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] = colours[k]
    return out


def _mask_files(paths: SamplePaths, rgb, mask, mpp_source: str, scale: int) -> dict:
    for name, picture in (("thumbnail_png", rgb), ("mask_overlay_png", overlay(rgb, mask))):
        getattr(paths, name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(picture).save(getattr(paths, name))
    Image.fromarray(mask.astype(np.uint8) * 255).save(paths.mask_png)
    h, w = mask.shape
    area = float(mask.sum()) * (scale * MPP) ** 2 / 1e6
    meta = {
        "sample": paths.sample,
        "slide_dimensions": [w * scale, h * scale],
        "mpp": MPP,
        "mpp_source": mpp_source,
        "thumbnail_mpp": scale * MPP,
        "mask_shape": [h, w],
        "mask_scale": [scale, scale],
        "tissue_fraction": round(float(mask.mean()), 6),
        "tissue_area_mm2": round(area, 6),
        "method": "otsu",
        "warnings": [] if mask.any() else ["no tissue found"],
    }
    paths.mask_json.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def _fail(root: Path, sample: str) -> None:
    log = root / log_path("mask_tissue", sample)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(
        f"2026-01-01 10:00:00 INFO histoflow.mask_tissue: rule mask_tissue sample {sample}\n"
        f"2026-01-01 10:00:01 ERROR histoflow.mask_tissue: sample '{sample}', file "
        f"'slides/{sample}.svs': no resolution metadata; give the mpp in the sheet\n"
    )


def _write_slide(root: Path, cohort: SyntheticCohort, i: int, rng) -> None:
    sample = cohort.samples[i]
    paths = SamplePaths(sample, str(root / "results"))
    h, w = cohort.thumbnail
    rgb, mask = tissue_blocks(h, w, seed=cohort.seed + i)
    if i in cohort.blank:
        rgb, mask = np.full_like(rgb, 245), np.zeros_like(mask)
    scale = SCALE * (10 if i in cohort.large else 1)
    meta = _mask_files(paths, rgb, mask, "sheet" if i in cohort.sheet_mpp else "file", scale)
    per_mm2 = cohort.objects_per_mm2 * (10 if i in cohort.dense else rng.uniform(0.9, 1.1))
    n = round(per_mm2 * meta["tissue_area_mm2"])
    counts = [round(n * share) for share in cohort.class_shares]
    objs = _objects(rng, counts, mask) if mask.any() else Objects.empty()
    paths.instances_parquet.parent.mkdir(parents=True, exist_ok=True)
    table = build_table([("nuclei", CLASSES, objs)])
    write_instance_table(
        table, paths.instances_parquet, {"slide_mpp": MPP, "tasks": {"nuclei": CLASSES}}
    )
    Image.fromarray(_objects_picture(rgb, objs)).save(paths.instances_overlay_png)
    for rule, seconds in RULES.items():
        bench = root / benchmark_path(rule, sample)
        bench.parent.mkdir(parents=True, exist_ok=True)
        bench.write_text(f"s\tmax_rss\n{seconds * (1 + i % 3)}\t100\n")
    paths.manifest_json.write_text("{}\n")


def write_synthetic_cohort(root: str | Path, cohort: SyntheticCohort) -> dict[str, dict]:
    """Write the cohort's files under root/results, root/logs and root/benchmarks;
    returns the sample sheet (sample -> {path, mpp})."""
    root = Path(root)
    rng = np.random.default_rng(cohort.seed)
    for i, sample in enumerate(cohort.samples):
        if i in cohort.failed:
            _fail(root, sample)
        else:
            _write_slide(root, cohort, i, rng)
    return {
        s: {"path": f"slides/{s}.svs", "mpp": MPP if i in cohort.sheet_mpp else None}
        for i, s in enumerate(cohort.samples)
    }

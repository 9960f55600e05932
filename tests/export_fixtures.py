"""Inputs of the export stage, written to the contracts in workflow/CONTRACTS.md.

Small and deterministic: maps.zarr with a probability head, a 3-class softmax head and
an unbounded head; raw.zarr with patch boxes; mask.json; instances.parquet with known
polygons, including an invalid (self-crossing) one, one with a hole and one without
area.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import shapely
import zarr
from histoflow.io.instance_table import SCHEMA, write_instance_table
from histoflow.synthetic.raw import write_synthetic_raw

SAMPLE = "S1"
SLIDE_MPP = 0.25
MPP = 0.5
SCALE = MPP / SLIDE_MPP

CLASSES = [
    {"name": "Tumor", "color": "#d62728"},
    {"name": "Stroma", "color": "#1f77b4"},
    {"name": "Lymphocyte", "color": "#2ca02c"},
]
TISSUE = [{"name": "Background", "color": "#ffffff"}, {"name": "Tissue", "color": "#ff7f0e"}]

MODEL = {
    "name": "test-model",
    "kind": "dense",
    "mpp": MPP,
    "patch_input": [64, 64],
    "patch_output": [64, 64],
    "heads": [
        {"name": "nucleus", "channels": 1, "activation": "sigmoid"},
        {"name": "tissue", "channels": 2, "activation": "softmax"},
        {"name": "energy", "channels": 1, "activation": "none"},
    ],
    "postprocess": [
        {
            "task": "nuclei",
            "method": "watershed",
            "heads": {"probability": "nucleus", "energy": "energy"},
            "classes": CLASSES,
        },
        {
            "task": "tissue",
            "method": "semantic",
            "heads": {"probability": "tissue"},
            "classes": TISSUE,
        },
    ],
}


def map_values(height: int, width: int) -> dict[str, np.ndarray]:
    """Deterministic map contents, a function of position only."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    nucleus = 0.5 + 0.5 * np.sin(xx / 7.0) * np.cos(yy / 5.0)
    t = 1 / (1 + np.exp(-(xx - width / 2) / 10.0))
    tissue = np.stack([1 - t, t], axis=-1)
    energy = (xx - yy)[..., None] / 10.0
    coverage = ((xx // 32 + yy // 32) % 3).astype(np.uint16)
    return {
        "nucleus": nucleus[..., None].astype(np.float32),
        "tissue": tissue.astype(np.float32),
        "energy": energy.astype(np.float32),
        "coverage": coverage,
    }


def make_maps(path: Path, height: int = 300, width: int = 420, band_rows: int = 64) -> Path:
    group = zarr.create_group(
        store=str(path),
        zarr_format=3,
        attributes={
            "sample": SAMPLE,
            "model": MODEL,
            "weights_sha256": None,
            "mpp": MPP,
            "slide_mpp": SLIDE_MPP,
            "scale": SCALE,
            "slide_dimensions": [int(width * SCALE), int(height * SCALE)],
            "shape": [height, width],
            "heads": MODEL["heads"],
            "band_rows": band_rows,
            "patches": 12,  # as merge records it: the patches of make_raw
        },
    )
    for name, data in map_values(height, width).items():
        arr = group.create_array(
            name, shape=data.shape, chunks=(band_rows, *data.shape[1:]), dtype=data.dtype
        )
        arr[:] = data
    return path


def make_raw(path: Path, n: int = 12) -> Path:
    # A contract raw.zarr (read through histoflow.io.raw_zarr): 3 rows of n // 3 patches.
    write_synthetic_raw(path, (192, 64 * (n // 3)), (64, 64), (64, 64), {"p": 1}, sample=SAMPLE)
    return path


def make_mask_json(path: Path, tissue_area_mm2: float = 0.5) -> Path:
    meta = {
        "sample": SAMPLE,
        "slide_path": "slide.svs",
        "slide_dimensions": [840, 600],
        "mpp": SLIDE_MPP,
        "mpp_source": "file",
        "thumbnail_mpp": 8.0,
        "mask_shape": [19, 26],
        "mask_scale": [32.0, 32.0],
        "tissue_fraction": 0.8,
        "tissue_area_mm2": tissue_area_mm2,
        "method": "otsu",
        "threshold": 0.1,
        "channel": "saturation",
        "warnings": [],
    }
    path.write_text(json.dumps(meta, sort_keys=True))
    return path


def instance_geometries(n: int = 60, seed: int = 0) -> list:
    """Ellipses across a 2000 x 1500 level-0 field, plus three special shapes at the end."""
    rng = np.random.default_rng(seed)
    geoms = []
    for _ in range(n):
        cx, cy = rng.uniform(20, 1980), rng.uniform(20, 1480)
        rx, ry = rng.uniform(3, 15), rng.uniform(3, 15)
        angle = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        geoms.append(shapely.Polygon(np.c_[cx + rx * np.cos(angle), cy + ry * np.sin(angle)]))
    # self-crossing bow tie: invalid, make_valid gives two triangles
    geoms.append(shapely.Polygon([(100, 100), (140, 140), (140, 100), (100, 140)]))
    # square with a hole
    geoms.append(shapely.box(500, 500, 560, 560).difference(shapely.box(520, 520, 540, 540)))
    # no area (all points on a line): exporters leave it out
    geoms.append(shapely.Polygon([(900, 900), (950, 950), (1000, 1000)]))
    return geoms


def make_instances(path: Path, n: int = 60, seed: int = 0) -> Path:
    geoms = instance_geometries(n, seed)
    rows = []
    for k, g in enumerate(geoms):
        x0, y0, x1, y1 = g.bounds
        c = g.centroid if g.area > 0 else shapely.Point((x0 + x1) / 2, (y0 + y1) / 2)
        cls = k % len(CLASSES)
        rows.append(
            {
                "id": f"nuclei-{int(y0 / SCALE)}-{int(x0 / SCALE)}-{k}",
                "task": "nuclei",
                "class_id": cls,
                "class_name": CLASSES[cls]["name"],
                "probability": 0.5 + 0.5 * ((k * 37) % 100) / 100,
                "centroid_x": c.x,
                "centroid_y": c.y,
                "bbox_x0": x0,
                "bbox_y0": y0,
                "bbox_x1": x1,
                "bbox_y1": y1,
                "area_px": g.area,
                "contour": shapely.to_wkb(g),
            }
        )
    meta = {
        "model": MODEL["name"],
        "mpp": MPP,
        "slide_mpp": SLIDE_MPP,
        "scale": SCALE,
        "tile_shape": [256, 256],
        "margin": 32,
        "tasks": {"nuclei": CLASSES},
    }
    write_instance_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, meta)
    return path


def make_benchmark(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"
    path.write_text(f"{header}\n{seconds}\t0:00:01\t100\t200\t90\t95\t0\t0\t50\t1.0\n")
    return path

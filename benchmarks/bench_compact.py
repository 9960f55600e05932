"""Stored types and codecs of maps.zarr, measured on a real run (issue 15).

Runs mask -> infer -> merge with the default model on a slide (the demo by default,
`--mosaic` for the 16384 px mosaic of it), keeping raw.zarr, then merges that raw.zarr
again with each `merge.encoding` (compact, float32) and `merge.compression` (blosc-zstd,
blosc-lz4, zstd, none), and prints markdown tables: bytes on disk, uncompressed bytes, merge
(write) and full decoded read throughput in MB of float32 maps per second; the largest
probability error of the compact maps; and the instances extract_instances finds on
the compact maps against those on float32 maps (F1 at IoU 0.5, mean IoU).

    .venv/bin/python benchmarks/bench_compact.py            # demo slide
    .venv/bin/python benchmarks/bench_compact.py --mosaic   # 16384 px mosaic
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
OUT = REPO / "benchmarks" / "out" / "compact"
MB = 1e6


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_stages(slide: Path, workdir: Path) -> Path:
    """mask, infer and merge through Snakemake, raw.zarr kept; returns results/<sample>."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "samples.tsv").write_text(f"sample\tpath\nS\t{slide}\n")
    cmd = [str(Path(sys.executable).with_name("snakemake")), "-s", str(REPO / "Snakefile")]
    cmd += ["-d", str(workdir), "--cores", "2", "--profile", str(REPO / "profiles/workstation")]
    cmd += ["--configfile", str(REPO / "config" / "config.yaml")]
    cmd += ["--config", f"samples={workdir / 'samples.tsv'}", "stages=[merge]", "keep=[raw,maps]"]
    subprocess.run(cmd, check=True, capture_output=True)
    return workdir / "results" / "S"


def read_all(path: Path) -> tuple[dict[str, np.ndarray], float]:
    from histoflow.io.maps_zarr import COVERAGE, open_maps

    maps = open_maps(path)
    t0 = time.perf_counter()
    out = {name: np.concatenate([b for _, b in maps.bands(name)]) for name in maps.arrays}
    seconds = time.perf_counter() - t0
    out.pop(COVERAGE)
    return out, seconds


def float32_bytes(maps: dict[str, np.ndarray]) -> int:
    return sum(a.size * 4 for a in maps.values())


def codec_table(raw: Path) -> tuple[list[str], dict]:
    from histoflow import merge
    from histoflow.merge import MergeOptions

    rows, stores = [], {}
    for encoding in ("compact", "float32"):
        for compression in ("blosc-zstd", "blosc-lz4", "zstd", "none"):
            out = OUT / f"{encoding}-{compression}.zarr"
            shutil.rmtree(out, ignore_errors=True)
            opts = MergeOptions.from_config({"encoding": encoding, "compression": compression})
            t0 = time.perf_counter()
            merge.run(raw, out, opts, threads=2)
            write_s = time.perf_counter() - t0
            values, read_s = read_all(out)
            f32 = float32_bytes(values)
            stores[(encoding, compression)] = (out, values)
            rows.append(
                f"| {encoding} | {compression} | {disk_bytes(out) / MB:.2f} | "
                f"{sum(np.prod(a.shape) * a.dtype.itemsize for a in _arrays(out)) / MB:.2f} | "
                f"{f32 / MB / write_s:.0f} | {f32 / MB / read_s:.0f} |"
            )
    return rows, stores


def _arrays(path: Path):
    from histoflow.io.maps_zarr import open_maps

    return list(open_maps(path).arrays.values())


def instances_table(stores: dict) -> list[str]:
    import shapely
    from histoflow.instances import InstancesOptions, evaluate, extract

    found = {}
    for encoding in ("compact", "float32"):
        path = stores[(encoding, "blosc-zstd")][0]
        per_task, _, _ = extract(path, InstancesOptions.from_config({"workers": 2}))
        found[encoding] = per_task
    rows = []
    for (task, _, objs_c), (_, _, objs_f) in zip(found["compact"], found["float32"], strict=True):
        m = evaluate.match(shapely.from_wkb(objs_c.contour), shapely.from_wkb(objs_f.contour))
        same = int(np.sum(objs_c.class_id == objs_f.class_id)) if m.f1 == 1.0 else "-"
        rows.append(
            f"| {task} | {len(objs_f.class_id)} | {len(objs_c.class_id)} | {m.f1:.5f} | "
            f"{m.mean_iou:.5f} | {same} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mosaic", action="store_true", help="the 16384 px mosaic of the demo")
    args = ap.parse_args()
    from histoflow.synthetic.mosaic import write_mosaic_tiff

    OUT.mkdir(parents=True, exist_ok=True)
    demo = REPO / "data" / "cmu_small_region.svs"
    slide = demo
    if args.mosaic:
        slide = OUT / "mosaic16k.tif"
        if not slide.exists():
            write_mosaic_tiff(slide, demo, size=16384)
    res = run_stages(slide, OUT / ("run-mosaic" if args.mosaic else "run-demo"))
    raw = res / "infer" / "raw.zarr"
    size, raw_mb = slide.stat().st_size / MB, disk_bytes(raw) / MB
    print(f"slide {slide.name}: {size:.2f} MB; raw.zarr {raw_mb:.2f} MB")
    rows, stores = codec_table(raw)
    print("\n| encoding | codec | on disk MB | uncompressed MB | merge MB/s | read MB/s |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    compact, full = stores[("compact", "blosc-zstd")][1], stores[("float32", "blosc-zstd")][1]
    errors = {name: float(np.abs(compact[name] - full[name]).max()) for name in full}
    print("\nlargest |compact - float32| per head:", errors)
    print("\n| task | objects (float32) | objects (compact) | F1 | mean IoU | same class |")
    print("|---|---|---|---|---|---|")
    print("\n".join(instances_table(stores)))


if __name__ == "__main__":
    main()

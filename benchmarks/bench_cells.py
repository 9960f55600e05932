"""Benchmark measure_cells: cells per second and peak RSS on a 16k x 16k slide.

The slide is the 16k mosaic of the demo slide (histoflow.synthetic.mosaic, JPEG tiles,
30 % glass blocks), read at 0.5 µm/px; the instance table holds digital-ellipse nuclei
(3-7 px semi-axes, two classes) on a jittered grid over the whole slide
(histoflow.synthetic.cells.write_ellipse_table), so every nucleus needs its pixels
read. Each run is a fresh process; peak RSS is the sum over the process and its
workers, sampled every 0.1 s. Prints a markdown table.

    .venv/bin/python benchmarks/bench_cells.py                  # 1 and 2 workers
    .venv/bin/python benchmarks/bench_cells.py --workers 2 --spacing 30

Goal (issue 17): >= 5,000 cells/s on 2 cores and <= 1.5 GB peak RSS with >= 100k cells.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

MPP = 0.5


def prepare(out: Path, size: int, spacing: float) -> tuple[Path, Path, int]:
    from histoflow.synthetic.cells import write_ellipse_table
    from histoflow.synthetic.mosaic import write_mosaic_tiff

    out.mkdir(parents=True, exist_ok=True)
    slide = out / f"mosaic-{size}.tif"
    if not slide.exists():
        t0 = time.perf_counter()
        write_mosaic_tiff(slide, REPO / "data" / "cmu_small_region.svs", size=size, mpp=MPP)
        print(f"# mosaic {size}² written in {time.perf_counter() - t0:.0f} s", flush=True)
    table = out / f"nuclei-{size}-{spacing:g}.parquet"
    count = out / f"{table.name}.count"
    if not count.exists():
        n = write_ellipse_table(table, (size, size), MPP, MPP, spacing=spacing, sample="bench")
        count.write_text(str(n))
    return slide, table, int(count.read_text())


def one_run(slide: str, table: str, out: str, workers: int, batch: int, block: int) -> dict:
    """A single measured run (called in a fresh process)."""
    from bench_instances import PeakRSS
    from histoflow.cells.stage import CellsOptions, run

    options = CellsOptions.from_config(
        {"workers": workers, "batch_rows": batch, "read_block": block}
    )
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        stats = run(table, slide, out, Path(out).with_suffix(".graph.parquet"), options)
        wall = time.perf_counter() - t0
    cpu = sum(
        u.ru_utime + u.ru_stime
        for u in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )
    return {
        "cpu": cpu,
        "cells": stats.cells,
        "wall": wall,
        "peak_rss": rss.peak,
        "blocks": stats.blocks,
        "edges": stats.edges,
        "seconds": stats.seconds,
        "file_mb": Path(out).stat().st_size / 1e6,
    }


def measured(slide, table, out, workers, batch, block) -> dict:
    cmd = [sys.executable, __file__, "--one", str(slide), str(table), str(out)]
    cmd += ["--workers", str(workers), "--batch", str(batch), "--block", str(block)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--spacing", type=float, default=40.0, help="grid step of nuclei (px)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=None, help="cells.batch_rows (default: schema's)")
    ap.add_argument("--block", type=int, default=None, help="cells.read_block (default: schema's)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "cells")
    ap.add_argument("--one", nargs=3, metavar=("SLIDE", "TABLE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    from histoflow.config import schema_defaults

    defaults = schema_defaults("cells")
    args.batch = args.batch or defaults["batch_rows"]
    args.block = args.block or defaults["read_block"]
    if args.one:
        print(json.dumps(one_run(*args.one, args.workers[0], args.batch, args.block)))
        return
    slide, table, n = prepare(args.out, args.size, args.spacing)
    print(f"# {args.size}² slide, {n} nuclei", flush=True)
    rows = []
    for workers in args.workers:
        out = args.out / f"cells-w{workers}.parquet"
        r = measured(slide, table, out, workers, args.batch, args.block)
        print(f"#   {workers} worker(s): {json.dumps(r)}", flush=True)
        rows.append((workers, r))
    print()
    print(
        f"measure_cells, {args.size}² mosaic at {MPP} µm/px, batch_rows {args.batch}, "
        f"read_block {args.block}; load average at the end {os.getloadavg()[0]:.1f}\n"
    )
    print(
        "| workers | cells | wall (s) | cells/s | CPU s | cells per CPU s | "
        "neighbours + graph (s) | blocks read | peak RSS (MiB) | cells.parquet (MB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for workers, r in rows:
        s = r["seconds"]
        print(
            f"| {workers} | {r['cells']} | {r['wall']:.1f} | {r['cells'] / r['wall']:.0f} | "
            f"{r['cpu']:.1f} | {r['cells'] / r['cpu']:.0f} | "
            f"{s['neighbours'] + s['graph']:.1f} | {r['blocks']} | "
            f"{r['peak_rss'] / 2**20:.0f} | {r['file_mb']:.1f} |"
        )


if __name__ == "__main__":
    main()

"""Benchmark extract_instances on large synthetic maps: speed, de-dup share, peak RSS.

Writes maps.zarr stores of nuclei-like blobs (watershed heads, as the built-in model
has) of growing size, runs the tiled stage on each, and the same post-processing on
the whole map where it fits in memory, each run in a fresh process so peak RSS is its
own. Prints a markdown table.

    .venv/bin/python benchmarks/bench_instances.py                 # 4k, 8k, 16k
    .venv/bin/python benchmarks/bench_instances.py --sizes 4096 --workers 2

Goals (issue 5): de-dup <= 15 % of the stage, peak RSS <= 2 GB on 16k x 16k.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

HEADS = {"nucleus": "probability", "energy": "energy"}
# Peak RSS per pixel of a whole-map pass, rounded up; sizes that cannot fit are skipped.
BYTES_PER_PX_WHOLE = 50


def write_store(path: Path, size: int, seed: int = 0) -> tuple[Path, int]:
    from histoflow.synthetic import maps as sm

    done = path.with_name(path.name + ".complete")
    objs = sm.random_nuclei((size, size), spacing=22, seed=seed)
    if not done.exists():
        card = sm.card("watershed", HEADS, params={"min_area_um2": 2.0}, patch_output=(256, 256))
        sm.write_maps(path, objs, (size, size), card, HEADS, band_rows=256)
        done.touch()
    return path, len(objs)


class PeakRSS:
    """Peak of the summed RSS of this process and its children, sampled."""

    def __init__(self, interval: float = 0.1):
        self.proc = psutil.Process()
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = self.proc.memory_info().rss
        for child in self.proc.children(recursive=True):
            # A worker may exit between listing and reading.
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())


def one_run(store: str, mode: str, out: str, tile: int, margin: int, workers: int) -> dict:
    """A single measured run (called in a fresh process)."""
    from histoflow.instances import InstancesOptions, run

    tiled = mode == "tiled"
    opts = InstancesOptions.from_config(
        {
            "tile_shape": [tile, tile] if tiled else None,
            "margin": margin,
            "workers": workers if tiled else 1,
        }
    )
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        stats = run(store, out, options=opts)
        wall = time.perf_counter() - t0
    return {
        "objects": sum(stats.objects.values()),
        "wall": wall,
        "dedup_share": stats.dedup_share,
        "dedup_s": stats.seconds["dedup"],
        "peak_rss": rss.peak,
        "tiles": stats.tiles,
        "truncated": sum(stats.truncated.values()),
        "conflicts": sum(stats.conflicts.values()),
        "file_mb": Path(out).stat().st_size / 1e6,
    }


def measured(store, mode, out, args) -> dict:
    cmd = [sys.executable, __file__, "--one", str(store), mode, str(out)]
    cmd += ["--tile", str(args.tile), "--margin", str(args.margin), "--workers", str(args.workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(a: Path, b: Path) -> tuple[float, int]:
    import pyarrow.parquet as pq
    import shapely
    from histoflow.instances import evaluate

    ga = shapely.from_wkb(pq.read_table(a, columns=["contour"])["contour"].to_numpy(False))
    gb = shapely.from_wkb(pq.read_table(b, columns=["contour"])["contour"].to_numpy(False))
    return evaluate.match(ga, gb).f1, evaluate.duplicates(ga)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192, 16384])
    ap.add_argument("--tile", type=int, default=2048)
    ap.add_argument("--margin", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--whole-max-gb", type=float, default=6.0, help="skip larger whole-map runs")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "instances")
    ap.add_argument("--one", nargs=3, metavar=("STORE", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        store, mode, out = args.one
        print(json.dumps(one_run(store, mode, out, args.tile, args.margin, args.workers)))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in args.sizes:
        t0 = time.perf_counter()
        store, n_true = write_store(args.out / f"maps-{size}.zarr", size)
        print(f"# {size}x{size}: {n_true} blobs, store ready in {time.perf_counter() - t0:.0f} s")
        tiled_out = args.out / f"tiled-{size}.parquet"
        tiled = measured(store, "tiled", tiled_out, args)
        print(f"#   tiled: {json.dumps(tiled)}", flush=True)
        whole, f1, dups = None, None, None
        est_gb = size * size * BYTES_PER_PX_WHOLE / 1e9
        if est_gb <= args.whole_max_gb:
            whole_out = args.out / f"whole-{size}.parquet"
            whole = measured(store, "whole", whole_out, args)
            print(f"#   whole: {json.dumps(whole)}", flush=True)
            f1, dups = compare(tiled_out, whole_out)
        else:
            _, dups = compare(tiled_out, tiled_out)
        rows.append((size, n_true, tiled, whole, f1, dups, est_gb))

    print()
    print(
        f"extract_instances, watershed nuclei, tile {args.tile} + margin {args.margin}, "
        f"{args.workers} worker process(es)\n"
    )
    print(
        "| map (px) | blobs | mode | objects | objects/s | wall (s) | de-dup share | "
        "peak RSS (MiB) | table (MB) | F1 tiled vs whole | duplicates |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, n_true, tiled, whole, f1, dups, est_gb in rows:
        for mode, r in (("tiled", tiled), ("whole map", whole)):
            if r is None:
                print(
                    f"| {size}² | {n_true} | whole map | - | - | - | - | "
                    f"(needs ~{est_gb:.0f} GB, skipped) | - | - | - |"
                )
                continue
            share = f"{100 * r['dedup_share']:.2f} %" if mode == "tiled" else "-"
            f1s = f"{f1:.4f}" if (f1 is not None and mode == "tiled") else "-"
            d = str(dups) if mode == "tiled" else "-"
            rate = r["objects"] / r["wall"]
            print(
                f"| {size}² | {n_true} | {mode} | {r['objects']} | {rate:.0f} | "
                f"{r['wall']:.1f} | {share} | {r['peak_rss'] / 2**20:.0f} | {r['file_mb']:.1f} | "
                f"{f1s} | {d} |"
            )


if __name__ == "__main__":
    main()

"""Memory and speed of the streaming per-tile writers (Zarr, HDF5, NPZ) at growing tile counts.

Each (format, N) runs in a fresh subprocess that opens a writer, writes N tiles of D
float32 values one `write()` at a time (as infer_tiles does) and closes it. Reported:
peak RSS growth over the process's RSS just before the first write (the writer's own
memory, from /proc/self/status VmHWM after resetting it), the size of the feature
data, wall time and tiles per second. A flat writer's growth does not follow N.

    .venv/bin/python benchmarks/bench_writers.py                 # 10k, 50k, 100k tiles, D=384
    .venv/bin/python benchmarks/bench_writers.py --tiles 100000 --dim 1024 --formats hdf5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
from pathlib import Path
sys.path.insert(0, {engine!r})
import numpy as np
from histoflow.io.tile_stores import TileResponse, create_writer

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

fmt, n, d, out = {fmt!r}, {n}, {d}, {out!r}
pool = np.random.default_rng(0).normal(size=(64, d)).astype(np.float32)
w = create_writer(fmt, out)
w.open(n, d)
w.set_metadata({{"name": "bench", "patch_size": 224}})
Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
base = status("VmRSS")
t0 = time.perf_counter()
for i in range(n):
    w.write(TileResponse(pool[i % 64], (i % 1000 * 224, i // 1000 * 224), 1.0))
w.close()
wall = time.perf_counter() - t0
print(json.dumps({{"growth": status("VmHWM") - base, "wall": wall}}))
"""


def run_one(fmt: str, n: int, d: int, tmp: Path) -> dict:
    out = tmp / f"bench-{fmt}-{n}"
    code = CHILD.format(engine=str(REPO / "workflow"), fmt=fmt, n=n, d=d, out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    size = sum(p.stat().st_size for p in out.rglob("*")) if out.is_dir() else out.stat().st_size
    return {**result, "disk": size}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--formats", nargs="+", default=["zarr", "hdf5", "npz"])
    args = ap.parse_args(argv)
    print(f"D = {args.dim} float32 per tile; growth = peak RSS over RSS before the first write")
    header = f"{'format':<6} {'tiles':>8} {'features MB':>12} {'growth MB':>10} "
    header += f"{'growth/data':>11} {'disk MB':>8} {'wall s':>7} {'tiles/s':>9}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory(prefix="histoflow-bench-writers-") as td:
        for fmt in args.formats:
            for n in args.tiles:
                r = run_one(fmt, n, args.dim, Path(td))
                data = n * args.dim * 4
                print(
                    f"{fmt:<6} {n:>8} {data / 1e6:>12.1f} {r['growth'] / 1e6:>10.1f} "
                    f"{r['growth'] / data:>11.2f} {r['disk'] / 1e6:>8.1f} {r['wall']:>7.2f} "
                    f"{n / r['wall']:>9.0f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Memory and speed of the streaming per-tile writers (Zarr, HDF5, NPZ) at growing tile counts.

Each (format, N) is one run of histoflow.synthetic.writer_load (a fresh process writes N
tiles of D float32 values one `write()` at a time, as infer_tiles does). Reported: peak
RSS growth over the process's RSS just before the first write (the writer's own
memory), the size of the feature data, wall time and tiles per second. A flat
writer's growth does not follow N.

    .venv/bin/python benchmarks/bench_writers.py                 # 10k, 50k, 100k tiles, D=384
    .venv/bin/python benchmarks/bench_writers.py --tiles 100000 --dim 1024 --formats hdf5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))


def main(argv=None) -> int:
    from histoflow.synthetic.writer_load import measure

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
                r = measure(fmt, n, args.dim, Path(td) / f"bench-{fmt}-{n}")
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

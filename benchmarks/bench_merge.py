"""Benchmark merge_patches on synthetic raw stores of growing height.

For each height: write a raw.zarr (two heads, overlapping stride), merge it in a fresh
subprocess (its own peak RSS from getrusage), then time plain numpy copies of the same
output bytes in another fresh subprocess: in RAM (memcpy) and to a file (tofile), the
physical references. Prints a markdown table.

    .venv/bin/python benchmarks/bench_merge.py --heights 16384 32768 65536
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

MB = 1024 * 1024


def parse_heads(text: str) -> dict[str, int]:
    return {name: int(c) for name, c in (item.split(":") for item in text.split(","))}


def smooth_values(heads: dict[str, int], patch: tuple[int, int]):
    """Blob-like patches that vary per patch: compressible like real probability maps."""
    h, w = patch
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.exp(-(((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 3)) ** 2))

    def values(boxes, grid):  # noqa: ARG001 - the ValuesFn signature of write_synthetic_raw
        scale = ((grid[:, 0] * 0.37 + grid[:, 1] * 0.61) % 1.0).astype(np.float32)
        out = {}
        for k, (name, c) in enumerate(heads.items()):
            chans = [base * (0.5 + 0.5 * ((scale + 0.2 * (k + j)) % 1.0))[:, None, None]
                     for j in range(c)]  # fmt: skip
            out[name] = np.stack(chans, axis=-1).astype(np.float16)
        return out

    return values


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def child(cmd: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, *cmd], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"child {cmd} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    # Linux keeps ru_maxrss across fork+exec, so a child reports at least its parent's
    # RSS at fork time: the parent stays small (stores are generated in a child too).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class RssPoller:
    """Peak RSS by polling psutil, a cross-check of ru_maxrss."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def run_merge(args) -> None:
    from histoflow.merge import MergeOptions
    from histoflow.merge import run as merge_patches

    opts = MergeOptions.from_config(
        {"memory_percent": args.memory_percent, "compression": args.compression}
    )
    with RssPoller() as poller:
        t0 = time.perf_counter()
        stats = merge_patches(args.raw, args.out, opts, threads=args.threads, tmpdir=args.tmpdir)
        wall = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "wall": wall,
                "rss_mb": peak_rss_mb(),
                "polled_mb": poller.peak / MB,
                "bands": stats.bands,
                "spilled": stats.spilled_bands,
                "patches": stats.patches,
            }
        )
    )


COPY_CAP = 4 * 1024**3  # the rate is steady long before; spares the shared disk


def run_copy(args) -> None:
    """Plain numpy: the same output bytes (up to COPY_CAP), in the merge's chunk-band pieces;
    times are scaled to all the bytes."""
    total, piece = args.nbytes, args.piece
    scale = max(1.0, total / COPY_CAP)
    total = min(total, COPY_CAP)
    src = np.random.default_rng(0).integers(0, 255, piece, dtype=np.uint8)
    dst = np.empty_like(src)
    t0 = time.perf_counter()
    for _ in range(0, total, piece):
        np.copyto(dst, src)
    memcpy = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open(args.out, "wb") as fh:
        for _ in range(0, total, piece):
            src.tofile(fh)
    filewrite = time.perf_counter() - t0
    os.unlink(args.out)
    print(json.dumps({"memcpy": memcpy * scale, "file": filewrite * scale}))


def run_generate(args) -> None:
    from histoflow.synthetic.raw import write_synthetic_raw

    heads = parse_heads(args.heads)
    patch, stride = (args.patch, args.patch), (args.stride, args.stride)
    t0 = time.perf_counter()
    write_synthetic_raw(
        args.raw,
        (args.height, args.width),
        patch,
        stride,
        heads,
        values=smooth_values(heads, patch),
        chunk_patches=16,
    )
    print(json.dumps({"wall": time.perf_counter() - t0}))


def bench(args) -> None:
    heads = parse_heads(args.heads)
    channels = sum(heads.values())
    root = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=args.workdir))
    rows = []
    try:
        for height in args.heights:
            raw, out = root / f"raw-{height}.zarr", root / f"maps-{height}.zarr"
            gen = child(
                ["--child", "generate", "--raw", str(raw), "--height", str(height),
                 "--width", str(args.width), "--patch", str(args.patch),
                 "--stride", str(args.stride), "--heads", args.heads]
            )["wall"]  # fmt: skip
            merged = child(
                ["--child", "merge", "--raw", str(raw), "--out", str(out),
                 "--threads", str(args.threads), "--compression", args.compression,
                 "--memory-percent", str(args.memory_percent), "--tmpdir", str(root)]
            )  # fmt: skip
            nbytes = height * args.width * (4 * channels + 2)
            piece = args.stride * args.width * (4 * channels + 2)
            copy = child(
                ["--child", "copy", "--nbytes", str(nbytes), "--piece", str(piece),
                 "--out", str(root / "copy.bin")]
            )  # fmt: skip
            rows.append(
                {
                    "height": height,
                    "patches": merged["patches"],
                    "raw_gb": dir_bytes(raw) / 1024**3,
                    "maps_gb": nbytes / 1024**3,
                    "disk_gb": dir_bytes(out) / 1024**3,
                    "gen_s": gen,
                    "wall": merged["wall"],
                    "rate": nbytes / MB / merged["wall"],
                    "rss": merged["rss_mb"],
                    "polled": merged["polled_mb"],
                    "spilled": f"{merged['spilled']}/{merged['bands']}",
                    "memcpy": nbytes / MB / copy["memcpy"],
                    "file": nbytes / MB / copy["file"],
                }
            )
            print(f"done {height}: {rows[-1]}", file=sys.stderr, flush=True)
            if not args.keep:
                shutil.rmtree(raw)
                shutil.rmtree(out)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_table(args, rows)


def print_table(args, rows) -> None:
    print(
        f"\nmerge_patches: width {args.width}, patch {args.patch}, stride {args.stride}, "
        f"heads {args.heads}, raw float16, maps {args.compression}, threads {args.threads}, "
        f"memory_percent {args.memory_percent:g}; {os.cpu_count()} CPUs\n"
    )
    print(
        "| height | patches | raw on disk GB | maps GB (decoded) | maps on disk GB | merge s "
        "| MB/s written | peak RSS MB (polled) | spilled bands | memcpy MB/s | file write MB/s "
        "| merge / memcpy | merge / file write |"
    )
    print("|" + "---|" * 13)
    for r in rows:
        print(
            f"| {r['height']} | {r['patches']} | {r['raw_gb']:.2f} | {r['maps_gb']:.2f} "
            f"| {r['disk_gb']:.2f} | {r['wall']:.1f} | {r['rate']:.0f} "
            f"| {r['rss']:.0f} ({r['polled']:.0f}) "
            f"| {r['spilled']} | {r['memcpy']:.0f} | {r['file']:.0f} "
            f"| {r['rate'] / r['memcpy']:.0%} | {r['rate'] / r['file']:.0%} |"
        )
    if len(rows) > 1:
        rss = [r["rss"] for r in rows]
        spread = (max(rss) - min(rss)) / min(rss)
        print(f"\npeak RSS spread across heights: {spread:.1%} (goal: within 10%, <= 1536 MB)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heights", type=int, nargs="+", default=[16384, 32768, 65536])
    p.add_argument("--width", type=int, default=16384)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--stride", type=int, default=224)
    p.add_argument("--heads", default="nucleus:1,hv:2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compression", default="blosc-lz4")
    p.add_argument("--memory-percent", type=float, default=50.0)
    p.add_argument("--workdir", default=None, help="where the stores go (default: $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the generated stores")
    p.add_argument("--child", choices=["generate", "merge", "copy"], help=argparse.SUPPRESS)
    p.add_argument("--height", type=int, help=argparse.SUPPRESS)
    p.add_argument("--raw", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--tmpdir", help=argparse.SUPPRESS)
    p.add_argument("--nbytes", type=int, help=argparse.SUPPRESS)
    p.add_argument("--piece", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "merge":
        run_merge(args)
    elif args.child == "copy":
        run_copy(args)
    elif args.child == "generate":
        run_generate(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()

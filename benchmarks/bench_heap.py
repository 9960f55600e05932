"""glibc's heap settings in infer_patches: page faults, system CPU and RSS (issue 16.2).

Runs `histoflow.inference.runner.run` on the demo slide (every grid cell, no mask) with
a HoVer-Net-shaped model (HoVer-Net fast PanNuke's card with HedHoverNet as the
network, 0.25 µm/px, 256 -> 164 px; `--tinyfcn`: bench_vs_tiatoolbox's TinyFCN,
0.5 µm/px, 256 -> 256 px, whose batch activations are 64 MiB; `--card` for another)
`--reps` times in one process per heap setting, one loader worker, 2 torch threads,
and prints per repetition: wall, user and system CPU seconds, minor page faults and the
process's peak RSS, so growth of the heap over repetitions shows. Settings (mmap
threshold / trim threshold, MiB): the shipped `bound_heap`, a smaller one, the earlier
fixed 1 MiB threshold, and glibc's dynamic default.

    .venv/bin/python benchmarks/bench_heap.py [--reps 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

SETTINGS = {  # key: (name, mmap MiB, trim MiB)
    "shipped": ("shipped 256 / 512 MiB", 256, 512),
    "smaller": ("64 / 256 MiB", 64, 256),
    "before": ("fixed 1 MiB (before)", 1, None),
    "dynamic": ("glibc dynamic", None, None),
}


def child(args) -> None:
    from histoflow.inference.threads import prefer_huge_pages

    prefer_huge_pages()
    import torch
    from histoflow.inference import core, runner
    from histoflow.models.card import load_dense_card
    from histoflow.models.loader import load_model

    mmap, trim, shipped = args.mmap, args.trim, core.bound_heap
    if mmap is None:
        core.bound_heap = lambda: None
    else:
        # trim None: glibc's default (128 KiB), as the 1 MiB setting set only the mmap one.
        trim_bytes = (trim << 20) if trim is not None else 128 * 1024
        core.bound_heap = lambda: shipped(mmap << 20, trim_bytes)
    torch.set_num_threads(2)
    card = load_dense_card(args.card)
    model = load_model(card)
    opts = runner.InferenceOptions.from_config({"num_workers": 1})
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            out = Path(tmp) / "raw.zarr"
            shutil.rmtree(out, ignore_errors=True)
            r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            grid = runner.run(str(args.slide), card, model, str(out), opts, threads=2)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            row = {
                "rep": rep,
                "patches": len(grid.boxes),
                "wall": time.perf_counter() - t0,
                "user": r1.ru_utime - r0.ru_utime,
                "sys": r1.ru_stime - r0.ru_stime,
                "faults": r1.ru_minflt - r0.ru_minflt,
                "rss_mb": r1.ru_maxrss / 1024,
            }
            print("ROW " + json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=4)
    p.add_argument("--settings", default=",".join(SETTINGS), help="of " + ", ".join(SETTINGS))
    p.add_argument("--card", help="model card (default: the HoVer-Net-shaped one)")
    p.add_argument("--tinyfcn", action="store_true", help="the TinyFCN of bench_vs_tiatoolbox")
    p.add_argument("--slide", type=Path, default=REPO / "data" / "cmu_small_region.svs")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mmap", type=int, help=argparse.SUPPRESS)
    p.add_argument("--trim", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    out = REPO / "benchmarks" / "out" / "heap"
    out.mkdir(parents=True, exist_ok=True)
    if args.tinyfcn:
        from bench_vs_tiatoolbox import write_card

        args.card = str(write_card(out, 256))
    elif not args.card:
        from bench_fullsize import hovernet_shaped_card

        args.card = str(hovernet_shaped_card(out))
    print("| heap setting (mmap / trim) | rep | patches | wall s | user s | sys s | sys / user "
          "| minor faults | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for key in args.settings.split(","):
        name, mmap, trim = SETTINGS[key]
        cmd = [sys.executable, __file__, "--child", "--card", args.card, "--slide", str(args.slide)]
        cmd += ["--reps", str(args.reps)]
        cmd += ["--mmap", str(mmap)] if mmap is not None else []
        cmd += ["--trim", str(trim)] if trim is not None else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = proc.stdout.splitlines()
        rows = [json.loads(line[4:]) for line in lines if line.startswith("ROW ")]
        if proc.returncode or not rows:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        for r in rows:
            print(
                f"| {name} | {r['rep']} | {r['patches']} | {r['wall']:.1f} | {r['user']:.1f} "
                f"| {r['sys']:.1f} | {r['sys'] / r['user']:.0%} | {r['faults']} "
                f"| {r['rss_mb']:.0f} |"
            )


if __name__ == "__main__":
    main()

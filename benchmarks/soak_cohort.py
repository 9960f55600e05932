"""Soak test (outside CI): a 20-slide cohort under a tight Snakemake memory budget.

Builds a cohort of N slides (symlinked copies of the demo slide, every fourth a small
mosaic TIFF so sizes differ), runs every stage through the workstation profile with
`--resources mem_mb=<cap>` so Snakemake may only start jobs whose declared mem_mb
fits the cap together, polls the RSS of the whole process tree, and prints a table:
slides, finished, failed, wall time, peak RSS of the run, the cap, and whether any job
was killed for memory (exit 137 / "Killed" in the logs).

    .venv/bin/python benchmarks/soak_cohort.py --slides 20 --mem-mb 6000
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        # A process may exit between listing and reading.
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--slides", type=int, default=20)
    ap.add_argument("--mem-mb", type=int, default=6000)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()

    from histoflow.synthetic.mosaic import write_mosaic_tiff

    work = args.workdir or Path(tempfile.mkdtemp(prefix="histoflow-soak-"))
    (work / "config").mkdir(parents=True, exist_ok=True)
    demo = REPO / "data" / "cmu_small_region.svs"
    rows = ["sample\tpath\tmpp\tmask"]
    for i in range(args.slides):
        if i % 4 == 3:
            path = work / f"mosaic-{i}.tif"
            if not path.exists():
                write_mosaic_tiff(path, demo, size=3072, block=1024, seed=i, background=0.3)
        else:
            path = work / f"slide-{i}.svs"
            if not path.exists():
                path.symlink_to(demo)
        rows.append(f"soak{i:02d}\t{path}\t\t")
    (work / "config" / "samples.tsv").write_text("\n".join(rows) + "\n")
    config = (REPO / "config" / "config.yaml").read_text()
    (work / "config" / "config.yaml").write_text(config)
    cmd = [
        str(Path(sys.executable).with_name("snakemake")),
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(work),
        "--profile",
        str(REPO / "profiles" / "workstation"),
        "--cores",
        str(args.cores),
        "--resources",
        f"mem_mb={args.mem_mb}",
        "gpu=1",
    ]
    t0 = time.perf_counter()
    # Output to a file: a pipe read only at the end fills up and blocks Snakemake.
    log_path = work / "soak.log"
    log_file = log_path.open("w")
    proc = subprocess.Popen(cmd, cwd=work, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    log_file.close()
    output = log_path.read_text(errors="replace")
    done = sum(
        (work / "results" / f"soak{i:02d}" / "manifest.json").exists() for i in range(args.slides)
    )
    logs = " ".join(p.read_text(errors="replace") for p in (work / "logs").rglob("*.log"))
    killed = "Killed" in logs or "exit status 137" in output or "signal 9" in output
    print(f"\nsoak cohort in {work}\n")
    print("| slides | finished | failed | wall s | peak RSS (tree) MB | mem_mb cap | OOM kill |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.slides} | {done} | {args.slides - done} | {wall:.0f} | {peak / 2**20:.0f} | "
        f"{args.mem_mb} | {'yes' if killed else 'no'} |"
    )
    if proc.returncode:
        print(output[-3000:])
        sys.exit(proc.returncode)


if __name__ == "__main__":
    main()

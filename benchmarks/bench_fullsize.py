"""The whole workflow on a 40x-sized slide and on the 16k mosaic: time, memory, bytes.

Generates (once, into the git-ignored benchmarks/out/fullsize/) a pyramidal JPEG
mosaic of the demo slide the size of a 40x scan (`--size`, default 49152 x 65536 px
at 0.25 µm/px level 0, levels down by 2 so 0.5 µm/px is a level, `--glass` share of
glass blocks) and the 16384² mosaic at 0.5 µm/px, then runs `snakemake --cores 2`
with the default config (default model, stages, exports; `keep: [raw, maps]` so the
temporary raw.zarr can be measured too) on each, one after the other, and prints:

  per rule   wall s, CPU s, peak RSS MB (Snakemake's benchmark files)
  per file   bytes of each stage store and export, ÷ slide file bytes, share of the
             results, bytes per object (instances)

Kept by default are maps.zarr and the exports (raw.zarr is removed after merge).

`--model hovernet` runs a HoVer-Net-shaped model instead: the card of HoVer-Net fast
PanNuke (0.25 µm/px, 256 -> 164 px, np 2-channel softmax, hv 2, tp 6-channel softmax,
the published post-processing) with the network replaced by
`histoflow.models.hed:HedHoverNet`, colour deconvolution that gives the same heads with
maps the post-processing splits into nuclei, at ~10 ms per patch on a CPU (HoVer-Net
fast itself: ~4 s, `bench_hovernet.py`).

    .venv/bin/python benchmarks/bench_fullsize.py [--size 49152x65536] [--only full|16k]
        [--model default|hovernet]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

OUT = REPO / "benchmarks" / "out" / "fullsize"


def ensure_slide(name: str, size: tuple[int, int], mpp: float, glass: float) -> Path:
    from histoflow.synthetic.mosaic import write_mosaic_tiff

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.tif"
    if not path.exists():
        t0 = time.perf_counter()
        part = path.with_name(path.name + ".part")
        write_mosaic_tiff(
            part, REPO / "data" / "cmu_small_region.svs", size=size, mpp=mpp, background=glass
        )
        part.rename(path)
        print(f"generated {path} ({size[0]}x{size[1]}) in {time.perf_counter() - t0:.0f} s")
    return path


def hovernet_shaped_card(directory: Path) -> Path:
    """HoVer-Net fast PanNuke's card with HedHoverNet as the network (no weights)."""
    card = yaml.safe_load(
        (REPO / "workflow/histoflow/models/cards/hovernet_fast-pannuke.yaml").read_text()
    )
    for key in ("weights", "licence"):
        card.pop(key, None)
    card["name"] = "hed_hovernet_bench"
    card["description"] = "HoVer-Net fast PanNuke's heads from histoflow.models.hed.HedHoverNet"
    card["input"] = {"scale": 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    card["source"] = {"entrypoint": "histoflow.models.hed:HedHoverNet", "kwargs": {"num_types": 6}}
    path = directory / "hed_hovernet_bench.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def run_workflow(slide: Path, workdir: Path, model: str) -> float:
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "config").mkdir(parents=True)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["samples"] = "config/samples.tsv"
    cfg["keep"] = ["raw", "maps"]
    if model == "hovernet":
        cfg["model"] = {**cfg["model"], "card": str(hovernet_shaped_card(workdir / "config"))}
    (workdir / "config" / "samples.tsv").write_text(f"sample\tpath\nslide\t{slide}\n")
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [str(REPO / ".venv" / "bin" / "snakemake"), "-s", str(REPO / "Snakefile")]
    cmd += ["-d", str(workdir), "--profile", str(REPO / "profiles" / "workstation")]
    cmd += ["--cores", "2", "--configfile", str(workdir / "config" / "config.yaml")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"snakemake failed:\n{(proc.stdout + proc.stderr)[-5000:]}")
    return time.perf_counter() - t0


def rule_rows(workdir: Path) -> list[tuple[str, float, float, float]]:
    rows = []
    for tsv in sorted((workdir / "benchmarks").glob("*/*.tsv")):
        with tsv.open() as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        cpu = float(row["cpu_time"]) if row.get("cpu_time") not in (None, "", "NA") else 0.0
        rss = float(row["max_rss"]) if row.get("max_rss") not in (None, "", "NA") else 0.0
        rows.append((tsv.parent.name, float(row["s"]), cpu, rss))
    return rows


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def file_rows(workdir: Path) -> list[tuple[str, int]]:
    root = workdir / "results" / "slide"
    items = [root / "mask", root / "infer" / "raw.zarr", root / "merge" / "maps.zarr"]
    items += sorted(p for p in (root / "merge").iterdir() if p.name != "maps.zarr")
    items += [root / "instances", root / "cells", *sorted((root / "export").iterdir())]
    return [(str(p.relative_to(root)), tree_bytes(p)) for p in items if p.exists()]


def objects(workdir: Path) -> int:
    import pyarrow.parquet as pq

    table = workdir / "results" / "slide" / "instances" / "instances.parquet"
    return pq.ParquetFile(table).metadata.num_rows if table.exists() else 0


def report(name: str, slide: Path, workdir: Path, wall: float) -> None:
    size = slide.stat().st_size
    n = objects(workdir)
    print(f"\n### {name}: {slide.name}, {size / 1e6:.0f} MB, {n} objects, {wall:.0f} s in all\n")
    print("| rule | wall s | CPU s | peak RSS MB |\n|---|---|---|---|")
    for rule, s, cpu, rss in rule_rows(workdir):
        print(f"| {rule} | {s:.1f} | {cpu:.1f} | {rss:.0f} |")
    files = file_rows(workdir)
    kept = sum(b for f, b in files if not f.startswith("infer/"))
    print("\n| file | MB | ÷ slide file | share of kept results | bytes per object |")
    print("|---|---|---|---|---|")
    for f, b in files:
        share = "(temporary)" if f.startswith("infer/") else f"{b / kept:.1%}"
        per = f"{b / n:.0f}" if n else "-"
        print(f"| {f} | {b / 1e6:.1f} | {b / size:.2f} | {share} | {per} |")
    maps = dict(files).get("merge/maps.zarr", 0)
    print(
        f"| kept results (all but raw.zarr) | {kept / 1e6:.1f} | {kept / size:.2f} | 100% "
        f"| {kept / n if n else 0:.0f} |\n\nstage files kept by default (maps.zarr) ÷ slide: "
        f"{maps / size:.2f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", default="49152x65536", help="HxW of the 40x slide at 0.25 µm/px")
    p.add_argument("--glass", type=float, default=0.6, help="share of glass blocks")
    p.add_argument("--only", choices=["full", "16k"])
    p.add_argument("--model", choices=["default", "hovernet"], default="default")
    p.add_argument("--report-only", action="store_true", help="tables of the last runs")
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    slides = {
        "16k": lambda: ensure_slide("mosaic-16384", (16384, 16384), 0.5, args.glass),
        "full": lambda: ensure_slide(f"fullsize-{h}x{w}", (h, w), 0.25, args.glass),
    }
    for name, make in slides.items():
        if args.only and name != args.only:
            continue
        slide = make()
        workdir = OUT / (f"run-{name}" if args.model == "default" else f"run-{name}-{args.model}")
        wall = float("nan") if args.report_only else run_workflow(slide, workdir, args.model)
        report(name, slide, workdir, wall)


if __name__ == "__main__":
    main()

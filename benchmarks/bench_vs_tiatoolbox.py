"""histoflow mask -> maps vs TIAToolbox 2.1.3's SemanticSegmentor, side by side in one run.

Same slide (the peer's 16384² mosaic, ../shared/peer/make_mosaic_slide.py), same model
(TinyFCN: Conv3x3(3->16)-ReLU-Conv3x3(16->16)-ReLU-Conv1x1(16->3), torch.manual_seed(0)
weights, softmax, centre crop to the output size: the peer's model, built here with the
same seed, so the weights are identical), same grid (256 px in, 256 or 164 px out,
stride = output), CPU, 2 threads, batch 16. Per case, alternating, fastest of
`--repeat`:

  tiatoolbox  bench_tiatoolbox.py --case semantic (engine.run as its docs say:
              patch_mode=False, auto_get_mask, zarr output), run() wall and process wall
  histoflow   snakemake --cores 2 up to merge/maps.zarr (mask_tissue, infer_patches,
              merge_patches), process wall and each rule's wall from its benchmark file;
              infer_patches' own log gives user/system CPU and minor page faults
  forward     the bare TinyFCN forward (with its softmax) of as many patches as
              infer_patches ran, in channels-last and contiguous layouts: the best of
              the two is the denominator of infer_patches' ratio

Peak memory is each process tree's (summed PSS, sampled every 50 ms).

    bash ../shared/peer/setup.sh   # once: TIAToolbox venv + mosaic under /tmp/peer
    .venv/bin/python benchmarks/bench_vs_tiatoolbox.py [--cases 256,164] [--repeat 1]
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "workflow"))

from bench_infer import run_measured  # noqa: E402 - after the path set-up

OUT = REPO / "benchmarks" / "out" / "vs_tiatoolbox"
PEER_SCRIPTS = REPO.parent / "shared" / "peer"
BATCH = 16
THREADS = 2


def tiny_fcn(out_size: int):
    """The peer's TinyFCN (same layers, same seed, hence the same weights), returning
    logits centre-cropped to `out_size` (histoflow applies the card's softmax)."""
    import torch

    class TinyFCN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.out_size = out_size
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, padding=1),
                torch.nn.ReLU(inplace=True),
                torch.nn.Conv2d(16, 16, 3, padding=1),
                torch.nn.ReLU(inplace=True),
                torch.nn.Conv2d(16, 3, 1),
            )

        def forward(self, x):
            y = self.body(x)
            h, w = y.shape[-2], y.shape[-1]
            y0, x0 = (h - self.out_size) // 2, (w - self.out_size) // 2
            return y[:, :, y0 : y0 + self.out_size, x0 : x0 + self.out_size]

    torch.manual_seed(0)
    return TinyFCN().eval()


def write_card(directory: Path, out_size: int) -> Path:
    import torch
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    torch.jit.script(tiny_fcn(out_size)).save(str(directory / "tinyfcn.pt"))
    card = {
        "name": f"tinyfcn{out_size}",
        "kind": "dense",
        "mpp": 0.5,
        "patch_input": [256, 256],
        "patch_output": [out_size, out_size],
        # TIAToolbox's TinyFCN takes x / 255: the same normalisation here.
        "input": {"scale": 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        "heads": [{"name": "classes", "channels": 3, "activation": "softmax"}],
        "source": {"torchscript": "tinyfcn.pt"},
    }
    path = directory / "tinyfcn.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return path


def histoflow_run(slide: Path, out_size: int, workdir: Path) -> dict:
    import yaml

    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "config").mkdir(parents=True)
    card = write_card(workdir / "model", out_size)
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["samples"] = "config/samples.tsv"
    cfg["stages"] = ["mask", "infer", "merge"]
    cfg["model"] = {"card": str(card)}
    cfg["inference"] = {**cfg["inference"], "batch_size": BATCH}
    (workdir / "config" / "samples.tsv").write_text(f"sample\tpath\nmosaic\t{slide}\n")
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [
        str(REPO / ".venv" / "bin" / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--profile",
        str(REPO / "profiles" / "workstation"),
        "--cores",
        str(THREADS),
        "--configfile",
        str(workdir / "config" / "config.yaml"),
    ]
    t0 = time.perf_counter()
    _, tree, _ = run_measured(cmd)
    wall = time.perf_counter() - t0
    rules = {}
    for rule in ("mask_tissue", "infer_patches", "merge_patches"):
        bench = next((workdir / "benchmarks" / rule).glob("*.tsv"))
        with bench.open() as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        rules[rule] = {"s": float(row["s"]), "max_rss": float(row["max_rss"])}
    log = (workdir / "logs" / "infer_patches" / "mosaic.log").read_text()
    return {"wall_s": wall, "tree_mb": tree, "rules": rules, **infer_log_figures(log)}


def infer_log_figures(log: str) -> dict:
    """Patches, user/system CPU seconds and minor faults from infer_patches' log."""
    cpu = re.search(r"CPU user ([\d.]+) s, system ([\d.]+) s, minor page faults (\d+)", log)
    patches = re.search(r"(\d+) patches in \d+ batches", log)
    layout = re.search(r"layout (\S+)", log)
    return {
        "patches": int(patches.group(1)),
        "user_s": float(cpu.group(1)),
        "sys_s": float(cpu.group(2)),
        "minflt": int(cpu.group(3)),
        "layout": layout.group(1) if layout else "?",
    }


def tiatoolbox_run(peer: Path, slide: Path, out_size: int, workdir: Path) -> dict:
    result = workdir / "tia.json"
    cmd = [
        str(peer / "venv" / "bin" / "python"),
        str(PEER_SCRIPTS / "bench_tiatoolbox.py"),
        "--case",
        "semantic",
        "--slide",
        str(slide),
        "--patch-in",
        "256",
        "--patch-out",
        str(out_size),
        "--stride",
        str(out_size),
        "--batch-size",
        str(BATCH),
        "--memory-threshold",
        "80",
        "--output-type",
        "zarr",
        "--save-dir",
        str(workdir / "tia-out"),
        "--json-out",
        str(result),
    ]
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _, tree, _ = run_measured(cmd)
    wall = time.perf_counter() - t0
    data = json.loads(result.read_text())
    if data.get("error"):
        raise SystemExit(f"TIAToolbox failed: {data['error']['msg']}")
    return {
        "run_s": data["run_s"],
        "wall_s": wall,
        "tree_mb": tree,
        "patches": data["n_patches_processed"],
    }


def forward_child(args) -> None:
    """Bare forward (+ softmax) of `args.patches` random patches, median of 3 passes."""
    import numpy as np
    import torch

    torch.set_num_threads(THREADS)
    layout = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}[
        args.forward
    ]
    model = tiny_fcn(args.out_size).to(memory_format=layout)
    rng = np.random.default_rng(0)
    data = torch.from_numpy(rng.integers(0, 256, (args.patches, 3, 256, 256), dtype=np.uint8))
    times = []
    with torch.inference_mode():
        model(data[:BATCH].float().div(255).contiguous(memory_format=layout))  # warm-up
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(0, len(data), BATCH):
                x = data[i : i + BATCH].float().div(255).contiguous(memory_format=layout)
                torch.softmax(model(x), dim=1)
            times.append(time.perf_counter() - t0)
    print(json.dumps({"wall_s": sorted(times)[1]}))


def forward_run(out_size: int, patches: int, layout: str) -> float:
    cmd = [sys.executable, __file__, "--forward", layout, "--out-size", str(out_size)]
    out, _, _ = run_measured([*cmd, "--patches", str(patches)])
    return json.loads(out.strip().splitlines()[-1])["wall_s"]


def one_case(args, out_size: int) -> dict:
    best: dict = {}
    for _ in range(max(1, args.repeat)):
        runs = {
            "tia": tiatoolbox_run(args.peer, args.slide, out_size, OUT / f"tia-{out_size}"),
            "hf": histoflow_run(args.slide, out_size, OUT / f"histoflow-{out_size}"),
        }
        n = runs["hf"]["patches"]
        for layout in ("channels_last", "contiguous"):
            runs[layout] = {"wall_s": forward_run(out_size, n, layout)}
        for key, run in runs.items():
            print(f"{out_size} {key}: {run}", file=sys.stderr)
            if key not in best or run["wall_s"] < best[key]["wall_s"]:
                best[key] = run
    return best


def table(results: dict[int, dict]) -> str:
    lines = [
        "| grid | TIAToolbox patches | TIAToolbox run() s / process s | TIAToolbox peak MB "
        "| histoflow patches | histoflow mask→maps s (mask / infer / merge) "
        "| histoflow peak MB | histoflow / TIAToolbox (process) "
        "| forward-only s (channels_last / contiguous) | infer_patches / best forward "
        "| infer user / system CPU s (sys share), minor faults |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for out_size, r in results.items():
        tia, hf = r["tia"], r["hf"]
        rules = hf["rules"]
        fwd = min(r["channels_last"]["wall_s"], r["contiguous"]["wall_s"])
        lines.append(
            f"| 256→{out_size} | {tia['patches']} | {tia['run_s']:.1f} / {tia['wall_s']:.1f} "
            f"| {tia['tree_mb']:.0f} | {hf['patches']} | {hf['wall_s']:.1f} "
            f"({rules['mask_tissue']['s']:.1f} / {rules['infer_patches']['s']:.1f} / "
            f"{rules['merge_patches']['s']:.1f}) | {hf['tree_mb']:.0f} "
            f"| {hf['wall_s'] / tia['wall_s']:.2f} "
            f"| {r['channels_last']['wall_s']:.1f} / {r['contiguous']['wall_s']:.1f} "
            f"| {rules['infer_patches']['s'] / fwd:.2f} "
            f"| {hf['user_s']:.1f} / {hf['sys_s']:.1f} ({hf['sys_s'] / hf['user_s']:.0%}), "
            f"{hf['minflt']} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--peer", type=Path, default=Path("/tmp/peer"))
    p.add_argument("--slide", type=Path, default=Path("/tmp/peer/data/mosaic16k.svs"))
    p.add_argument("--cases", default="256,164", help="output sizes (input 256)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--forward", choices=["channels_last", "contiguous"], help=argparse.SUPPRESS)
    p.add_argument("--out-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--patches", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.forward:
        forward_child(args)
        return
    for needed in (args.peer / "venv" / "bin" / "python", args.slide):
        if not needed.exists():
            raise SystemExit(f"{needed} missing: run bash ../shared/peer/setup.sh first")
    OUT.mkdir(parents=True, exist_ok=True)
    results = {int(c): one_case(args, int(c)) for c in args.cases.split(",")}
    print(
        f"\nmask → maps on {args.slide.name}, TinyFCN, CPU, {THREADS} threads, batch {BATCH}, "
        f"fastest of {args.repeat}\n"
    )
    print(table(results))


if __name__ == "__main__":
    main()

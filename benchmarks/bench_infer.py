"""infer_patches at scale: the whole stage versus the bare model forward on the same patches.

Generates a pyramidal tiled TIFF mosaic of the real demo slide (with glass regions),
masks it, then runs, each in a fresh subprocess so peak RSS is its own:
  stage    run_inference (read + normalise + forward + activation + chunked raw.zarr)
  forward  the same patches read into memory first, then only the timed forward passes
and prints patches, wall, forward-only time, their ratio and peak RSS (markdown).

Goal (issue 3): stage <= 1.15 x forward-only on CPU with a small conv model, peak RSS
<= 1.5 GB. `--model smallconv` is a 4-layer conv net (TorchScript, random fixed
weights) whose forward dominates like a real network's; `--model builtin` is the
weight-free HED model, whose forward is so cheap that reading dominates.

    .venv/bin/python benchmarks/bench_infer.py --size 16384 --model smallconv
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

OUT = REPO / "benchmarks" / "out" / "infer"


def small_conv_card(directory: Path) -> str:
    import torch
    import yaml

    class SmallConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(16, 32, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(32, 32, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(32, 3, 1),
            )

        def forward(self, x):
            y = self.body(x)
            return {"tissue": y[:, :2], "density": y[:, 2:]}

    directory.mkdir(parents=True, exist_ok=True)
    torch.jit.script(SmallConv().eval()).save(str(directory / "smallconv.pt"))
    card = {
        "name": "smallconv",
        "kind": "dense",
        "mpp": 0.5,
        "patch_input": [256, 256],
        "patch_output": [256, 256],
        "heads": [
            {"name": "tissue", "channels": 2, "activation": "softmax"},
            {"name": "density", "channels": 1, "activation": "none"},
        ],
        "source": {"torchscript": "smallconv.pt"},
    }
    (directory / "smallconv.yaml").write_text(yaml.safe_dump(card))
    return str(directory / "smallconv.yaml")


def child(args) -> None:
    """One measured run; prints a JSON line with its figures."""
    import numpy as np
    import psutil
    import torch
    from histoflow.inference.runner import InferenceOptions, activate, plan_grid, run_inference
    from histoflow.models.card import load_card
    from histoflow.models.loader import load_model, outputs_by_head
    from histoflow.slide import open_slide
    from histoflow.tissue import read_mask

    torch.set_num_threads(args.threads)
    card = load_card(args.card)
    model = load_model(card)
    mask, meta = read_mask(args.workdir / "mask.png", args.workdir / "mask.json")
    opts = InferenceOptions(batch_size=args.batch, num_workers=args.workers)
    if args.child == "stage":
        t0 = time.perf_counter()
        grid = run_inference(
            str(args.slide),
            card,
            model,
            str(args.workdir / "raw.zarr"),
            opts,
            sample="bench",
            mask=mask,
            mask_meta=meta,
        )
        wall = time.perf_counter() - t0
        n = len(grid.boxes)
    else:
        with open_slide(args.slide) as slide:
            grid, _ = plan_grid(slide, card, opts, mask, meta)
            patches = [
                slide.read_region(x0, y0, x1 - x0, y1 - y0, card.mpp)
                for x0, y0, x1, y1 in grid.input_boxes()
            ]
        data = torch.from_numpy(np.stack(patches).transpose(0, 3, 1, 2).copy())
        del patches
        norm = card.card["input"]
        mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(norm["std"]).view(1, 3, 1, 1)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(data), args.batch):
                x = (data[i : i + args.batch].float() / norm["scale"] - mean) / std
                outs = outputs_by_head(card, model(x))
                for h in card.heads:
                    activate(outs[h["name"]], h.get("activation", "none"))
        wall = time.perf_counter() - t0
        n = len(data)
    peak = psutil.Process().memory_info().rss
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except ImportError:
        pass
    print(
        json.dumps({"mode": args.child, "patches": n, "wall_s": wall, "peak_rss_mb": peak / 2**20})
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=16384)
    p.add_argument("--model", choices=["smallconv", "builtin"], default="smallconv")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", choices=["stage", "forward"])
    p.add_argument("--slide", type=Path)
    p.add_argument("--card")
    p.add_argument("--workdir", type=Path)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    from histoflow.slide import open_slide
    from histoflow.synthetic.mosaic import write_mosaic_tiff
    from histoflow.tissue import MaskOptions, compute_tissue_mask, write_outputs

    OUT.mkdir(parents=True, exist_ok=True)
    slide = OUT / f"mosaic-{args.size}.tif"
    if not slide.exists():
        t = time.perf_counter()
        write_mosaic_tiff(slide, REPO / "data" / "cmu_small_region.svs", size=args.size)
        print(f"generated {slide} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    workdir = OUT / f"run-{args.size}-{args.model}"
    workdir.mkdir(exist_ok=True)
    with open_slide(slide) as s:
        result = compute_tissue_mask(s, MaskOptions.from_config())
    write_outputs(
        result, *(workdir / n for n in ("mask.png", "thumb.png", "overlay.png", "mask.json"))
    )
    card = small_conv_card(workdir) if args.model == "smallconv" else "builtin:hed_nuclei"
    rows = {}
    for mode in ("forward", "stage"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--slide",
            str(slide),
            "--card",
            card,
            "--workdir",
            str(workdir),
            "--batch",
            str(args.batch),
            "--workers",
            str(args.workers),
            "--threads",
            str(args.threads),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[mode] = json.loads(out.strip().splitlines()[-1])
    st, fw = rows["stage"], rows["forward"]
    print(
        f"\ninfer_patches, {args.size}x{args.size} mosaic at 0.5 µm/px, model {args.model}, "
        f"batch {args.batch}, workers {args.workers}, torch threads {args.threads}\n"
    )
    print(
        "| patches | stage wall s | forward-only s | stage / forward | patches/s (stage) "
        "| peak RSS stage MB | peak RSS forward MB |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {st['patches']} | {st['wall_s']:.1f} | {fw['wall_s']:.1f} | "
        f"{st['wall_s'] / fw['wall_s']:.2f} | {st['patches'] / st['wall_s']:.1f} | "
        f"{st['peak_rss_mb']:.0f} | {fw['peak_rss_mb']:.0f} |"
    )


if __name__ == "__main__":
    main()

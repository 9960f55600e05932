"""infer_patches on a GPU: stage vs forward-only throughput, GPU busy share, loader wait.

One command, meant to end inside 8 minutes on a one-GPU machine. On histoflow's 16384²
mosaic of the demo slide (generated, masked), for HoVer-Net fast (6 types, 256 -> 164
px; the formula checkpoint of TIAToolbox's key listing where ../shared/reference has
it, else its random initialisation: weights do not change the speed) and TinyFCN (the
peer's 3-layer net, 256 -> 164 px), at 0.5 µm/px, bf16 autocast, channels_last:

  forward  the bare forward (normalise, model, activations) of as many random patches
           as the stage ran, already on the device, synchronised: the ceiling
  stage    histoflow.inference.runner.run as infer_patches runs it (reads in loader
           workers, pinned copies, device normalisation, float16 raw.zarr), with the
           GPU's utilisation sampled by nvidia-smi every 100 ms while it runs

Goals (issue 16): stage >= 0.85 x forward-only patches/s, GPU busy >= 85 %.

    .venv/bin/python benchmarks/bench_gpu.py                 # cuda, bf16
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --size 4096 --precision none
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "workflow"))

OUT = REPO / "benchmarks" / "out" / "gpu"


def cards(workdir: Path) -> dict[str, tuple[str, str | None]]:
    """(card path, weights or None) of each benchmarked model."""
    import bench_hovernet
    from bench_vs_tiatoolbox import write_card as tiny_card

    weights = None
    if bench_hovernet.KEYS.exists():
        weights = str(bench_hovernet.formula_weights(bench_hovernet.KEYS))
    return {
        "hovernet_fast": (bench_hovernet.write_card(workdir / "hovernet", mpp=0.5), weights),
        "tinyfcn": (str(tiny_card(workdir / "tinyfcn", 164)), None),
    }


def load(card_path: str, weights: str | None):
    from histoflow.models.card import load_dense_card
    from histoflow.models.hovernet import load_checkpoint
    from histoflow.models.loader import load_model

    card = load_dense_card(card_path, None)
    model = load_model(card)
    if weights:
        load_checkpoint(weights, model)
    return card, model.eval()


def options(args):
    from histoflow.inference.runner import InferenceOptions

    return InferenceOptions.from_config(
        {"batch_size": args.batch, "device": args.device, "precision": args.precision}
    )


def child_stage(args) -> dict:
    import torch
    from histoflow.inference import core
    from histoflow.inference.runner import run
    from histoflow.io.mask_files import read_mask

    torch.set_num_threads(args.threads)
    card, model = load(args.card, args.weights)
    mask, meta = read_mask(args.workdir / "mask.png", args.workdir / "mask.json")
    stats = core.ForwardStats()
    out = args.workdir / f"raw-{card.name}.zarr"
    t0 = time.perf_counter()
    grid = run(str(args.slide), card, model, str(out), options(args), sample="bench",
               mask=mask, mask_meta=meta, threads=args.threads, stats=stats)  # fmt: skip
    wall = time.perf_counter() - t0
    return {"patches": len(grid.boxes), "wall_s": wall, "loader_wait_s": stats.loader_wait_s}


def child_forward(args) -> dict:
    import torch
    from histoflow.inference import core
    from histoflow.inference.runner import activate
    from histoflow.models.loader import outputs_by_head

    torch.set_num_threads(args.threads)
    card, model = load(args.card, args.weights)
    device = core.pick_device(args.device, "device")
    layout = core.memory_format("auto", device)
    model = core.prepare_model(model, device, layout)
    normalise = core.Normaliser(card.card["input"], device, layout=layout)
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, *card.patch_input, 3)
    batches = [
        torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen).to(device)
        for _ in range(min(8, -(-args.patches // args.batch)))
    ]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    on_cuda = device.type == "cuda"

    def one(x):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
            outs = outputs_by_head(card, model(normalise(x)))
        for h in card.heads:
            activate(outs[h["name"]].float(), h["activation"]).to(torch.float16)

    with torch.inference_mode():
        one(batches[0])  # warm-up (cuDNN autotuning, allocator)
        if on_cuda:
            torch.cuda.synchronize(device)
        t0, done = time.perf_counter(), 0
        while done < args.patches:
            one(batches[(done // args.batch) % len(batches)])
            done += args.batch
        if on_cuda:
            torch.cuda.synchronize(device)
    return {"patches": done, "wall_s": time.perf_counter() - t0}


class GpuSampler:
    """nvidia-smi utilisation samples (percent) while a block runs; empty without it."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._proc = None

    def __enter__(self):
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        try:
            self._proc = subprocess.Popen([*cmd, "-lms", "100"], stdout=subprocess.PIPE, text=True)
        except OSError:
            return self
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            first = line.strip().split(",")[0]
            if first.isdigit():
                self.samples.append(float(first))

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()

    @property
    def busy(self) -> str:
        # The first samples fall in the process start (imports, model load): left out.
        s = self.samples[len(self.samples) // 10 :]
        return f"{sum(s) / len(s):.0f} %" if s else "n/a"


def measured(args, mode: str, card: str, weights: str | None, **extra) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--card",
        card,
        "--workdir",
        str(args.workdir),
    ]
    cmd += ["--slide", str(args.slide), "--device", args.device, "--precision", args.precision]
    cmd += ["--batch", str(args.batch), "--threads", str(args.threads)]
    cmd += ["--weights", weights] if weights else []
    for key, value in extra.items():
        cmd += [f"--{key}", str(value)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def prepare(args) -> None:
    from bench_hovernet import ensure_mosaic
    from histoflow.io.mask_files import write_mask_files
    from histoflow.slide import open_slide
    from histoflow.tissue import MaskOptions, compute_tissue_mask

    args.workdir.mkdir(parents=True, exist_ok=True)
    args.slide = ensure_mosaic(args.size)
    with open_slide(args.slide) as s:
        result = compute_tissue_mask(s, MaskOptions.from_config())
    names = ("mask.png", "thumb.png", "overlay.png", "mask.json")
    write_mask_files(result, *(args.workdir / n for n in names))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", choices=["none", "bf16", "fp16"], default="bf16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--size", type=int, default=16384)
    p.add_argument("--child", choices=["stage", "forward"], help=argparse.SUPPRESS)
    p.add_argument("--card", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    p.add_argument("--patches", type=int, help=argparse.SUPPRESS)
    p.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, default=OUT, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        fn = child_stage if args.child == "stage" else child_forward
        print(json.dumps(fn(args)))
        return
    t0 = time.perf_counter()
    prepare(args)
    rows = []
    for name, (card, weights) in cards(args.workdir).items():
        with GpuSampler() as gpu:
            stage = measured(args, "stage", card, weights)
        forward = measured(args, "forward", card, weights, patches=stage["patches"])
        rows.append((name, stage, forward, gpu.busy))
        print(f"{name}: stage {stage}, forward {forward}, GPU busy {gpu.busy}", file=sys.stderr)
    print(
        f"\ninfer_patches on {args.device} ({args.precision}), {args.size}² mosaic at 0.5 µm/px, "
        f"batch {args.batch}, {args.threads} threads; {time.perf_counter() - t0:.0f} s in all\n"
    )
    print(
        "| model | patches | stage patches/s | forward-only patches/s | stage / forward "
        "| GPU busy (stage) | loader wait s (share) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, st, fw, busy in rows:
        sp, fp = st["patches"] / st["wall_s"], fw["patches"] / fw["wall_s"]
        print(
            f"| {name} | {st['patches']} | {sp:.1f} | {fp:.1f} | {sp / fp:.2f} | {busy} "
            f"| {st['loader_wait_s']:.1f} ({st['loader_wait_s'] / st['wall_s']:.0%}) |"
        )


if __name__ == "__main__":
    main()

"""HoVer-Net fast at scale: the infer_patches stage versus the bare forward on the same patches.

Generates the 16384 px mosaic of the demo slide (histoflow.synthetic.mosaic, into the
git-ignored benchmarks/out/hovernet/), masks it (mask_tissue), and runs each step in
a fresh subprocess so its peak memory is its own:
  probe     forward-only on the first `--probe-patches` patches in each memory layout
            (contiguous, channels_last) and torch thread count (1, 2 on CPU), after
            one untimed warm-up batch: picks the fastest configuration
  forward   the selected patches read into memory first, then only the timed forward
            passes (normalise, model, activations) in the fastest configuration
  stage     histoflow.inference.runner.run (read + normalise + forward + activation +
            chunked raw.zarr), the infer_patches stage as the rule runs it
  merge     merge_patches on the stage's raw.zarr (histoflow.merge.run)
  instances extract_instances on the maps (histoflow.instances.run); it tiles the
            whole map, so its time follows the slide's area, not the patch count
            (`--post merge` or `none` leaves it out, or both)
and prints a markdown table: patches, wall and CPU seconds, patches/s, peak memory of
each rule (summed PSS of the process tree / RSS of the main process, sampled every
50 ms), the 1-minute load average at the start and end of each step, and the ratio
stage / forward-only. CPU seconds are the steadier figure on shared machines.

Patches: the model card's grid of the mosaic keeps the tissue patches; the benchmark
takes the `N` of them nearest the tissue's centre (a compact block, so merge and
post-processing see neighbouring patches) and restricts the stage to exactly those
through a mask with one pixel per grid cell. `N` is as many as fit `--budget-s`
(estimated from the probe), at most `--max-patches`.

Model: HoVer-Net fast with 6 types, the built-in card `hovernet_fast-pannuke` (0.25
µm/px, 256 -> 164 px) with its weights given as config field `model.weights` would give
them (`--card entrypoint` writes an entry-point card for histoflow.models.hovernet:HoVerNet
instead). Weights: the formula checkpoint of the TIAToolbox key listing, written once
next to the mosaic (`--weights PATH` takes a real checkpoint; `random` keeps the
initialisation, entry-point card only; weights do not change the speed). The stage's
torch threads default to the probe's best count;
the rule itself sets max(1, inference.num_workers). `--device cuda --precision bf16`
runs the same on a GPU (layouts only are probed there).

    .venv/bin/python benchmarks/bench_hovernet.py --budget-s 900
    .venv/bin/python benchmarks/bench_hovernet.py --max-patches 32 --budget-s 300
    .venv/bin/python benchmarks/bench_hovernet.py --device cuda --precision bf16 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_infer import run_measured  # noqa: E402 - after the path set-up

OUT = REPO / "benchmarks" / "out" / "hovernet"
KEYS = REPO.parent / "shared" / "reference" / "tiatoolbox-2.1.3-nucleus-checkpoint-keys.json"
LISTING = "hovernet_fast-pannuke"
PANNUKE = [
    ("Background", "#000000"),
    ("Neoplastic", "#ff0000"),
    ("Inflammatory", "#00ff00"),
    ("Connective", "#0000ff"),
    ("Dead", "#ffff00"),
    ("Epithelial", "#ffa500"),
]
LAYOUTS = ("contiguous", "channels_last")
WARMUP_PATCHES = 1
# Estimated seconds of one child's start (imports, model build) and of merge + instances.
START_S = 10.0
POST_S = 60.0


def write_card(directory: Path, mpp: float = 0.25) -> str:
    """An entry-point card for HoVer-Net fast (6 types) in `directory`; returns its path."""
    import yaml

    card = {
        "name": "hovernet_fast_bench",
        "kind": "dense",
        "mpp": mpp,
        "patch_input": [256, 256],
        "patch_output": [164, 164],
        # The model divides by 255 itself.
        "input": {"scale": 1, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        "heads": [
            {"name": "np", "channels": 2, "activation": "softmax"},
            {"name": "hv", "channels": 2, "activation": "none"},
            {"name": "tp", "channels": 6, "activation": "softmax"},
        ],
        "postprocess": [
            {
                "task": "nuclei",
                "method": "hovernet",
                "heads": {"probability": "np", "hv": "hv", "type": "tp"},
                "classes": [{"name": n, "color": c} for n, c in PANNUKE],
            }
        ],
        "source": {
            "entrypoint": "histoflow.models.hovernet:HoVerNet",
            "kwargs": {"mode": "fast", "num_types": 6},
        },
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hovernet_fast_bench.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False))
    return str(path)


# ---------------------------------------------------------------- children


def cpu_seconds() -> float:
    """This process (all threads) plus its joined children (DataLoader workers)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def load_bench_model(args):
    """(card, model) as infer_patches loads them: a built-in card gets the weights file
    as config field model.weights; the entry-point card loads it afterwards."""
    from histoflow.models.card import load_dense_card
    from histoflow.models.hovernet import load_checkpoint
    from histoflow.models.loader import load_model

    weights = None if args.weights == "random" else args.weights
    builtin = args.card.startswith("builtin:")
    card = load_dense_card(args.card, weights if builtin else None)
    model = load_model(card)
    if weights is not None and not builtin:
        load_checkpoint(weights, model)
    return card, model.eval()


def formula_weights(keys: Path) -> Path:
    """The formula checkpoint of the key listing (published key names), written once."""
    import torch
    from histoflow.models.hovernet import formula_state_dict

    path = OUT / f"{LISTING}.formula.pth"
    if not path.exists():
        listing = json.loads(keys.read_text())[LISTING]["keys"]
        part = path.with_name(path.name + ".part")
        torch.save(formula_state_dict(listing), part)
        part.rename(path)
    return path


def read_selection(path: Path) -> tuple[np.ndarray, dict]:
    """The per-grid-cell mask and its mask metadata written by `write_selection`."""
    with np.load(path) as z:
        return z["mask"], {"mask_scale": [float(v) for v in z["mask_scale"]]}


def inference_options(args):
    """The benchmark's `inference` config section as InferenceOptions."""
    from histoflow.inference.runner import InferenceOptions

    return InferenceOptions.from_config(
        dict(
            batch_size=args.batch,
            num_workers=args.workers,
            device=args.device,
            precision=args.precision,
        )
    )


def read_patches(args, card, device):
    """The selection's input patches as one uint8 (N, h, w, 3) tensor on `device`."""
    import torch
    from histoflow.inference.runner import plan_grid
    from histoflow.slide import open_slide

    mask, meta = read_selection(args.selection)
    with open_slide(args.slide) as slide:
        grid, _ = plan_grid(slide, card, inference_options(args), mask, meta)
        patches = [
            slide.read_region(x0, y0, x1 - x0, y1 - y0, card.mpp)
            for x0, y0, x1, y1 in grid.input_boxes()
        ]
    return torch.from_numpy(np.stack(patches)).to(device)


class Forward:
    """Timed forward-only passes of one model over patches held in memory."""

    def __init__(self, args, card, model):
        import torch

        self.card, self.model, self.batch = card, model, args.batch
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.model.to(self.device)
        norm = card.card["input"]
        self.scale = float(norm["scale"])
        self.mean = torch.tensor(norm["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(norm["std"], device=self.device).view(1, 3, 1, 1)
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)

    def set_layout(self, layout: str) -> None:
        """Convert the model's weights to `layout` (inputs follow in `run`)."""
        import torch

        self.layout = layout
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        self.model.to(memory_format=fmt)

    def sync(self) -> None:
        """Wait for the device (CUDA timings end here)."""
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.device)

    def run(self, data) -> tuple[float, float]:
        """(wall s, CPU s) of normalise + model + activations over `data` in batches."""
        import torch
        from histoflow.inference.runner import activate
        from histoflow.models.loader import outputs_by_head

        fmt = torch.channels_last if self.layout == "channels_last" else torch.contiguous_format
        enabled = self.cuda and self.autocast is not None
        self.sync()
        c0, t0 = cpu_seconds(), time.perf_counter()
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.autocast, enabled=enabled),
        ):
            for i in range(0, len(data), self.batch):
                x = data[i : i + self.batch].permute(0, 3, 1, 2).float()
                x = ((x / self.scale - self.mean) / self.std).contiguous(memory_format=fmt)
                outs = outputs_by_head(self.card, self.model(x))
                for h in self.card.heads:
                    activate(outs[h["name"]].float(), h["activation"])
        self.sync()
        return time.perf_counter() - t0, cpu_seconds() - c0


def child_probe(args) -> dict:
    """Forward-only rate of each layout and thread count on the probe patches."""
    import torch

    card, model = load_bench_model(args)
    fwd = Forward(args, card, model)
    data = read_patches(args, card, fwd.device)
    threads = [args.threads] if fwd.cuda else [1, 2]
    configs = []
    for layout in LAYOUTS:
        fwd.set_layout(layout)
        for n in threads:
            torch.set_num_threads(n)
            fwd.run(data[:WARMUP_PATCHES])
            wall, cpu = fwd.run(data)
            configs.append(
                {"layout": layout, "threads": n, "patches": len(data), "wall_s": wall, "cpu_s": cpu}
            )
    return {"configs": configs}


def child_forward(args) -> dict:
    """Forward-only over the selection in one layout and thread count (no warm-up)."""
    import torch

    torch.set_num_threads(args.threads)
    card, model = load_bench_model(args)
    fwd = Forward(args, card, model)
    data = read_patches(args, card, fwd.device)
    fwd.set_layout(args.layout)
    wall, cpu = fwd.run(data)
    return {"patches": len(data), "wall_s": wall, "cpu_s": cpu}


def child_stage(args) -> dict:
    """The infer_patches stage over the selection, into a fresh raw.zarr."""
    import torch
    from histoflow.inference.runner import run as run_inference

    torch.set_num_threads(args.threads)
    card, model = load_bench_model(args)
    mask, meta = read_selection(args.selection)
    raw = args.workdir / "raw.zarr"
    shutil.rmtree(raw, ignore_errors=True)  # a complete store would be resumed as done
    c0, t0 = cpu_seconds(), time.perf_counter()
    grid = run_inference(
        str(args.slide),
        card,
        model,
        str(raw),
        inference_options(args),
        sample="bench",
        mask=mask,
        mask_meta=meta,
    )
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return {
        "patches": len(grid.boxes),
        "wall_s": time.perf_counter() - t0,
        "cpu_s": cpu_seconds() - c0,
    }


def child_mask(args) -> dict:
    """mask_tissue on the whole mosaic."""
    from histoflow.tissue import MaskOptions
    from histoflow.tissue import run as run_mask

    names = ("mask.png", "thumb.png", "overlay.png", "mask.json")
    c0, t0 = cpu_seconds(), time.perf_counter()
    run_mask(
        args.slide,
        tuple(args.workdir / n for n in names),
        MaskOptions.from_config(),
        sample="bench",
    )
    return {"patches": None, "wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0}


def child_merge(args) -> dict:
    """merge_patches on the stage's raw.zarr, with the rule's thread count."""
    from histoflow.io.raw_zarr import open_raw
    from histoflow.merge import run as run_merge
    from histoflow.merge.resources import merge_threads

    raw, maps = args.workdir / "raw.zarr", args.workdir / "maps.zarr"
    shutil.rmtree(maps, ignore_errors=True)
    attrs = open_raw(raw).attrs
    c0, t0 = cpu_seconds(), time.perf_counter()
    stats = run_merge(raw, maps, threads=merge_threads(attrs), tmpdir=str(args.workdir))
    return {
        "patches": stats.patches,
        "wall_s": time.perf_counter() - t0,
        "cpu_s": cpu_seconds() - c0,
    }


def child_instances(args) -> dict:
    """extract_instances on the maps with the config's defaults."""
    from histoflow.instances import InstancesOptions
    from histoflow.instances import run as run_instances

    table = args.workdir / "instances.parquet"
    table.unlink(missing_ok=True)
    c0, t0 = cpu_seconds(), time.perf_counter()
    stats = run_instances(args.workdir / "maps.zarr", table, None, InstancesOptions.from_config())
    return {
        "patches": None,
        "objects": sum(stats.objects.values()),
        "wall_s": time.perf_counter() - t0,
        "cpu_s": cpu_seconds() - c0,
    }


CHILDREN = {
    "mask": child_mask,
    "probe": child_probe,
    "forward": child_forward,
    "stage": child_stage,
    "merge": child_merge,
    "instances": child_instances,
}


# ---------------------------------------------------------------- parent


def tissue_cells(
    slide: Path, card_spec: str, workdir: Path, args
) -> tuple[np.ndarray, tuple, float]:
    """Grid cells (row, col) of the tissue patches nearest the tissue's centre first,
    the grid's shape and the level-0 px per grid cell."""
    from histoflow.inference.runner import plan_grid
    from histoflow.io.mask_files import read_mask
    from histoflow.models.card import load_card
    from histoflow.slide import open_slide

    card = load_card(card_spec)
    mask, meta = read_mask(workdir / "mask.png", workdir / "mask.json")
    with open_slide(slide) as s:
        grid, _ = plan_grid(s, card, inference_options(args), mask, meta)
        cell = grid.stride[0] * card.mpp / s.mpp
    if grid.stride[0] != grid.stride[1] or tuple(grid.stride) != card.patch_output:
        raise SystemExit("the benchmark needs a square stride equal to the output patch")
    centre = np.median(grid.grid, axis=0)
    d = np.abs(grid.grid - centre)
    order = np.lexsort((d.sum(axis=1), d.max(axis=1)))
    return grid.grid[order], grid.grid_shape, cell


def write_selection(path: Path, cells: np.ndarray, grid_shape: tuple, cell: float) -> Path:
    """A mask with one pixel per grid cell, set on `cells` (exact box fractions 0 or 1)."""
    mask = np.zeros(grid_shape, bool)
    mask[cells[:, 0], cells[:, 1]] = True
    np.savez(path, mask=mask, mask_scale=np.array([cell, cell]))
    return path


class Runner:
    """Starts the measured children with the shared arguments and collects their rows."""

    def __init__(self, args, slide: Path, card: str, workdir: Path):
        self.args, self.slide, self.card, self.workdir = args, slide, card, workdir
        self.rows: dict[str, dict] = {}

    def __call__(self, mode: str, selection: Path | None = None, **extra) -> dict:
        """Run child `mode`; return its JSON figures with memory and load averages."""
        a = self.args
        cmd = [sys.executable, __file__, "--child", mode, "--slide", str(self.slide)]
        cmd += ["--card", self.card, "--workdir", str(self.workdir)]
        cmd += ["--weights", a.weights, "--batch", str(a.batch), "--workers", str(a.workers)]
        cmd += ["--device", a.device, "--precision", a.precision]
        if selection is not None:
            cmd += ["--selection", str(selection)]
        for key, value in extra.items():
            cmd += [f"--{key}", str(value)]
        load0 = os.getloadavg()[0]
        out, tree, main_rss = run_measured(cmd)
        run = json.loads(out.strip().splitlines()[-1])
        run.update(tree=tree, rss=main_rss, load=(load0, os.getloadavg()[0]))
        print(f"{mode}: {json.dumps(run)}", file=sys.stderr)
        return run

    def keep(self, name: str, run: dict) -> None:
        """Keep the fastest run of `name` (CPU the least seen, memory the highest)."""
        best = self.rows.get(name)
        if best is None:
            self.rows[name] = run
            return
        fastest = run if run["wall_s"] < best["wall_s"] else best
        self.rows[name] = {
            **fastest,
            "cpu_s": min(run["cpu_s"], best["cpu_s"]),
            "tree": max(run["tree"], best["tree"]),
            "rss": max(run["rss"], best["rss"]),
            "load": (min(run["load"][0], best["load"][0]), max(run["load"][1], best["load"][1])),
        }


def patches_for_budget(args, probe: list[dict], stage_threads: int, elapsed: float) -> int:
    """How many patches the forward and stage runs (and merge, instances) fit in the budget."""
    best = max(probe, key=lambda c: c["patches"] / c["wall_s"])
    same = [c for c in probe if c["layout"] == "contiguous" and c["threads"] == stage_threads]
    stage_rate = (same or [best])[0]["patches"] / (same or [best])[0]["wall_s"] / 1.1
    per_patch = 1 / (best["patches"] / best["wall_s"]) + 1 / stage_rate
    left = (
        args.budget_s - elapsed - 2 * args.repeat * START_S - (POST_S if args.post == "all" else 0)
    )
    return max(1, int(left / (args.repeat * per_patch)))


def ensure_mosaic(size: int) -> Path:
    """The mosaic TIFF of the demo slide, generated on first use."""
    from histoflow.synthetic.mosaic import write_mosaic_tiff

    OUT.mkdir(parents=True, exist_ok=True)
    slide = OUT / f"mosaic-{size}.tif"
    if not slide.exists():
        t = time.perf_counter()
        part = slide.with_name(slide.name + ".part")
        write_mosaic_tiff(part, REPO / "data" / "cmu_small_region.svs", size=size)
        part.rename(slide)
        print(f"generated {slide} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return slide


def main_runs(args) -> tuple[Runner, list[dict], dict]:
    """All measured runs: mask, probe, forward and stage (alternating), merge, instances."""
    t_start = time.perf_counter()
    slide = ensure_mosaic(args.size)
    workdir = OUT / f"run-{args.size}"
    workdir.mkdir(exist_ok=True)
    card = write_card(workdir) if args.card == "entrypoint" else args.card
    args.weights_label = args.weights
    if args.weights == "formula":
        args.weights = str(formula_weights(args.keys))
    run = Runner(args, slide, card, workdir)
    run.rows["mask_tissue"] = run("mask")
    cells, grid_shape, cell = tissue_cells(slide, card, workdir, args)
    n_probe = min(args.probe_patches, len(cells))
    probe_sel = write_selection(workdir / "probe.npz", cells[:n_probe], grid_shape, cell)
    probe = run("probe", probe_sel)["configs"]
    best = max(probe, key=lambda c: c["patches"] / c["wall_s"])
    stage_threads = args.stage_threads or best["threads"]
    n = min(
        len(cells),
        args.max_patches,
        patches_for_budget(args, probe, stage_threads, time.perf_counter() - t_start),
    )
    sel = write_selection(workdir / f"selection-{n}.npz", cells[:n], grid_shape, cell)
    for _ in range(max(1, args.repeat)):
        run.keep(
            "forward-only", run("forward", sel, layout=best["layout"], threads=best["threads"])
        )
        run.keep("infer_patches", run("stage", sel, threads=stage_threads))
    if args.post in ("merge", "all"):
        run.rows["merge_patches"] = run("merge")
    if args.post == "all":
        run.rows["extract_instances"] = run("instances")
    from histoflow.models.card import load_card

    info = {
        "card": load_card(card),
        "tissue_patches": len(cells),
        "best": best,
        "stage_threads": stage_threads,
        "total_s": time.perf_counter() - t_start,
    }
    return run, probe, info


def print_tables(args, run: Runner, probe: list[dict], info: dict) -> None:
    """The markdown tables of the measured runs."""
    rows, best, card = run.rows, info["best"], info["card"]
    st, fw = rows["infer_patches"], rows["forward-only"]
    print(
        f"\n{card.name}, {args.size}x{args.size} mosaic read at {card.mpp} µm/px "
        f"({card.patch_input[0]} -> {card.patch_output[0]} px), {st['patches']} of its "
        f"{info['tissue_patches']} tissue patches; "
        f"batch {args.batch}, workers {args.workers}, device {args.device}, precision "
        f"{args.precision}, weights {args.weights_label}; stage: contiguous, torch threads "
        f"{info['stage_threads']}; forward-only: {best['layout']}, threads {best['threads']}; "
        f"fastest of {args.repeat} alternating runs, memory the highest seen; "
        f"{os.cpu_count()} CPUs; whole benchmark {info['total_s']:.0f} s\n"
    )
    print(
        "| rule / step | patches | wall s | CPU s | patches/s | peak memory MB "
        "(tree PSS / main RSS) | load avg 1 min (start → end) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        patches = r.get("patches")
        rate = f"{patches / r['wall_s']:.2f}" if patches else "-"
        label = f"{name} ({r['objects']} objects)" if "objects" in r else name
        print(
            f"| {label} | {patches if patches else 'whole slide'} | {r['wall_s']:.1f} "
            f"| {r['cpu_s']:.1f} | {rate} | {r['tree']:.0f} / {r['rss']:.0f} "
            f"| {r['load'][0]:.2f} → {r['load'][1]:.2f} |"
        )
    print(
        f"\nstage / forward-only: wall {st['wall_s'] / fw['wall_s']:.2f}, "
        f"CPU {st['cpu_s'] / fw['cpu_s']:.2f}\n"
    )
    print(f"forward-only probe ({probe[0]['patches']} patches after a warm-up batch):\n")
    print("| layout | torch threads | patches/s | CPU s per patch |")
    print("|---|---|---|---|")
    for c in probe:
        print(
            f"| {c['layout']} | {c['threads']} | {c['patches'] / c['wall_s']:.3f} "
            f"| {c['cpu_s'] / c['patches']:.2f} |"
        )


def parse_args():
    """Command-line options (the children get the same ones plus --child)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=16384, help="mosaic side, px at 0.5 µm/px")
    p.add_argument(
        "--card",
        default="builtin:hovernet_fast-pannuke",
        help="model card, or 'entrypoint' for one written for HoVer-Net fast (6 types)",
    )
    p.add_argument("--weights", default="formula", help="formula, random or a checkpoint path")
    p.add_argument("--keys", type=Path, default=KEYS, help="TIAToolbox key listing (formula)")
    p.add_argument("--max-patches", type=int, default=10**9)
    p.add_argument("--budget-s", type=float, default=900.0, help="seconds for the whole run")
    p.add_argument("--probe-patches", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="inference.num_workers of the stage")
    p.add_argument("--threads", type=int, default=2, help="torch threads (GPU runs)")
    p.add_argument("--stage-threads", type=int, help="default: the probe's best")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--repeat", type=int, default=1, help="alternating forward/stage runs")
    p.add_argument(
        "--post",
        choices=["none", "merge", "all"],
        default="all",
        help="also run merge_patches (merge) and extract_instances (all) on the stage's output",
    )
    p.add_argument("--child", choices=sorted(CHILDREN))
    p.add_argument("--slide", type=Path)
    p.add_argument("--workdir", type=Path)
    p.add_argument("--selection", type=Path)
    p.add_argument("--layout", choices=LAYOUTS, default="contiguous")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return
    run, probe, info = main_runs(args)
    print_tables(args, run, probe, info)


if __name__ == "__main__":
    main()

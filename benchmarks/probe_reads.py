"""Whose read of a slide at the model's resolution is right: histoflow's or TIAToolbox's?

Writes fiducial slides (Gaussian dots at known sub-pixel positions, every level
rendered exactly; histoflow.synthetic.fiducials) at scanner resolutions near and
away from the model's, reads the same 256 px patches at 0.5 µm/px with histoflow
(Slide.read_region, as infer_patches does) and with TIAToolbox 2.1.3 (its
WSIPatchDataset's call: WSIReader.read_bounds(..., coord_space="resolution")) in the
peer venv of ../shared/peer, and prints each reader's dot placement error in model
pixels. Then reads the same patches of the real demo slide (0.499 µm/px) with both
and prints their grey-level difference and the sub-pixel shift between them
(phase correlation), so the demo difference can be explained by the fiducial figures.

    .venv/bin/python benchmarks/probe_reads.py [--peer /tmp/peer]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

PATCH = 256
MODEL_MPP = 0.5

# Runs in the peer venv: TIAToolbox reads the listed bounds, saved as one .npz.
TIA_READER = f"""
import json, sys, numpy as np
MPP = {MODEL_MPP!r}
from tiatoolbox.wsicore.wsireader import WSIReader
job = json.load(open(sys.argv[1]))
out = dict()
for name, (path, mpp, bounds) in job.items():
    reader = WSIReader.open(path, mpp=(mpp, mpp))  # generic TIFFs: the mpp as a sheet gives it
    out[name] = np.stack([
        reader.read_bounds(tuple(b), resolution=MPP, units="mpp",
                           pad_constant_values=255, coord_space="resolution")[..., :3]
        for b in bounds
    ])
np.savez(sys.argv[2], **out)
"""


def origins(slide, mpp: float) -> list[tuple[int, int]]:
    w, h = slide.size_at(mpp)
    last = (max(w - PATCH, 0), max(h - PATCH, 0))
    return [(0, 0), (last[0] // 2 + 7, last[1] // 2 + 3), last]


def histoflow_patches(path: Path, corners) -> np.ndarray:
    from histoflow.slide import open_slide

    with open_slide(path) as slide:
        return np.stack([slide.read_region(x, y, PATCH, PATCH, MODEL_MPP) for x, y in corners])


def tia_patches(peer: Path, jobs: dict, work: Path) -> dict[str, np.ndarray] | None:
    python = peer / "venv" / "bin" / "python"
    if not python.exists():
        print(f"no TIAToolbox venv at {python} (bash ../shared/peer/setup.sh)", file=sys.stderr)
        return None
    (work / "job.json").write_text(json.dumps(jobs))
    (work / "tia.py").write_text(TIA_READER)
    subprocess.run(
        [str(python), str(work / "tia.py"), str(work / "job.json"), str(work / "tia.npz")],
        check=True,
    )
    with np.load(work / "tia.npz") as data:
        return {k: data[k] for k in data.files}


def errors_of(patches: np.ndarray, corners, scale: float, truth) -> np.ndarray:
    from histoflow.synthetic.fiducials import read_errors

    return np.concatenate(
        [read_errors(p, c, scale, truth) for p, c in zip(patches, corners, strict=True)]
    )


def fiducial_rows(work: Path, peer: Path) -> list[str]:
    from histoflow.slide import open_slide
    from histoflow.synthetic.fiducials import write_fiducial_slide

    cases, jobs = {}, {}
    for mpp in (0.25, 0.2467, 0.3, 0.499, 0.5):
        path = work / f"dots-{mpp}.tif"
        sigma = 1.5 * MODEL_MPP / mpp
        truth = write_fiducial_slide(path, (4096, 4096), mpp, 14 * sigma, sigma, seed=5)
        with open_slide(path) as slide:
            corners = origins(slide, MODEL_MPP)
            scale = MODEL_MPP / slide.mpp
        cases[str(mpp)] = (path, corners, scale, truth)
        jobs[str(mpp)] = (str(path), mpp, [(x, y, x + PATCH, y + PATCH) for x, y in corners])
    tia = tia_patches(peer, jobs, work)
    rows = [
        "| slide µm/px | scale | dots | histoflow max / mean error (model px) "
        "| TIAToolbox max / mean error (model px) |",
        "|---|---|---|---|---|",
    ]
    for name, (path, corners, scale, truth) in cases.items():
        ours = errors_of(histoflow_patches(path, corners), corners, scale, truth)
        theirs = "not run"
        if tia is not None:
            e = errors_of(tia[name], corners, scale, truth)
            theirs = f"{np.nanmax(e):.3f} / {np.nanmean(e):.3f}"
        rows.append(
            f"| {name} | {scale:.4f} | {len(ours)} | {ours.max():.3f} / {ours.mean():.3f} "
            f"| {theirs} |"
        )
    return rows


def demo_rows(work: Path, peer: Path) -> list[str]:
    from histoflow.slide import open_slide
    from skimage.registration import phase_cross_correlation

    demo = REPO / "data" / "cmu_small_region.svs"
    with open_slide(demo) as slide:
        corners = origins(slide, MODEL_MPP)
        shape, mpp = slide.size_at(MODEL_MPP), slide.mpp
    ours = histoflow_patches(demo, corners)
    bounds = [(x, y, x + PATCH, y + PATCH) for x, y in corners]
    tia = tia_patches(peer, {"demo": (str(demo), mpp, bounds)}, work)
    rows = [f"demo slide at {MODEL_MPP} µm/px: histoflow shape {shape[0]} x {shape[1]} (w x h)"]
    if tia is None:
        return rows
    rows += [
        "",
        "| patch corner (x, y) | mean abs grey difference "
        "| shift of TIAToolbox vs histoflow (dx, dy px) |",
        "|---|---|---|",
    ]
    for corner, a, b in zip(corners, ours, tia["demo"], strict=True):
        diff = np.abs(a.astype(int) - b.astype(int)).mean()
        shift, _, _ = phase_cross_correlation(
            a.mean(axis=2), b.mean(axis=2), upsample_factor=100, normalization=None
        )
        rows.append(f"| {corner} | {diff:.1f} | ({-shift[1]:+.2f}, {-shift[0]:+.2f}) |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", type=Path, default=Path("/tmp/peer"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("\n".join(fiducial_rows(work, args.peer)))
        print()
        print("\n".join(demo_rows(work, args.peer)))


if __name__ == "__main__":
    main()

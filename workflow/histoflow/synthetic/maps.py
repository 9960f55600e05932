"""Synthetic slide-scale maps (`merge/maps.zarr`) with known objects.

Objects are ellipses with a class; from them we render the head outputs a dense
model would give: a foreground probability with a soft edge, an energy map that
peaks at each centre, HoVer-Net horizontal/vertical distance maps, per-class type
probabilities and semantic class probabilities. Rendering works on any window, so a
16k x 16k store is written band by band without holding the slide in memory, and the
ground-truth label image of a window comes from the same code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import zarr

from histoflow.io.maps_zarr import COVERAGE, encode, store_encodings

OBJECT_DTYPE = np.dtype(
    [("cx", "f8"), ("cy", "f8"), ("rx", "f8"), ("ry", "f8"), ("theta", "f8"), ("cls", "i4")]
)
# Head kinds a synthetic store can hold: kind -> channels (None: number of classes).
KINDS = {"probability": 1, "energy": 1, "hv": 2, "type": None, "semantic": None}


def make_objects(rows: Iterable[Sequence[float]]) -> np.ndarray:
    """Objects from (cx, cy, rx, ry[, theta[, cls]]) tuples; theta in radians."""
    out = []
    for r in rows:
        cx, cy, rx, ry, *rest = r
        theta = rest[0] if rest else 0.0
        cls = int(rest[1]) if len(rest) > 1 else 0
        out.append((cx, cy, rx, ry, theta, cls))
    return np.array(out, dtype=OBJECT_DTYPE).reshape(-1)


def random_nuclei(
    shape: tuple[int, int],
    spacing: float = 22.0,
    radius: tuple[float, float] = (4.0, 8.0),
    classes: Sequence[int] = (0,),
    touching: float = 0.3,
    seed: int = 0,
) -> np.ndarray:
    """Nuclei-like ellipses on a jittered grid; a share `touching` get a touching twin."""
    rng = np.random.default_rng(seed)
    h, w = shape
    ys, xs = np.mgrid[spacing / 2 : h : spacing, spacing / 2 : w : spacing]
    n = ys.size
    jitter = rng.uniform(-0.2, 0.2, (2, n)) * spacing
    cx, cy = xs.ravel() + jitter[0], ys.ravel() + jitter[1]
    rx = rng.uniform(*radius, n)
    ry = rx * rng.uniform(0.6, 1.0, n)
    theta = rng.uniform(0, math.pi, n)
    cls = rng.choice(np.asarray(classes), n)
    objs = np.empty(n, OBJECT_DTYPE)
    objs["cx"], objs["cy"], objs["rx"], objs["ry"] = cx, cy, rx, ry
    objs["theta"], objs["cls"] = theta, cls
    twins = objs[rng.random(n) < touching].copy()
    # A twin sits one diameter (mean of both) along a random direction: the two touch.
    ang = rng.uniform(0, 2 * math.pi, len(twins))
    r2 = rng.uniform(*radius, len(twins)) * 0.8
    d = twins["ry"] + r2 * 0.9
    twins["cx"] += d * np.cos(ang)
    twins["cy"] += d * np.sin(ang)
    twins["rx"], twins["ry"] = r2, r2 * 0.85
    twins["theta"] = ang
    objs = np.concatenate([objs, twins])
    inside = (objs["cx"] >= 0) & (objs["cx"] < w) & (objs["cy"] >= 0) & (objs["cy"] < h)
    return objs[inside]


def _extent(objs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Half-width and half-height of each rotated ellipse's bounding box."""
    c, s = np.cos(objs["theta"]), np.sin(objs["theta"])
    ex = np.sqrt((objs["rx"] * c) ** 2 + (objs["ry"] * s) ** 2)
    ey = np.sqrt((objs["rx"] * s) ** 2 + (objs["ry"] * c) ** 2)
    return ex, ey


def render(
    objs: np.ndarray,
    window: tuple[int, int, int, int],
    n_classes: int = 1,
    edge_px: float = 1.0,
) -> dict[str, np.ndarray]:
    """Maps of the objects in `window` (y0, y1, x0, x1), pixel centres at integers.

    Returns float32 arrays `probability` (h, w, 1), `energy` (h, w, 1), `hv` (h, w, 2),
    `type` (h, w, n_classes; channel = object class), `semantic` (h, w, n_classes;
    softmax of class logits, background = class 0) and int32 `labels` (h, w): index
    into `objs` plus one of the object each pixel belongs to (nearest in ellipse
    units, so touching objects partition the pixels between them), 0 for background.
    """
    y0, y1, x0, x1 = window
    h, w = y1 - y0, x1 - x0
    qbest = np.full((h, w), np.inf)
    labels = np.zeros((h, w), np.int32)
    prob = np.zeros((h, w), np.float32)
    energy = np.zeros((h, w), np.float32)
    # Semantic logits: background 0, other classes -6 away from their objects.
    logits = np.full((h, w, max(n_classes, 1)), -6.0, np.float32)
    logits[..., 0] = 0.0
    hv = np.zeros((h, w, 2), np.float32)
    ex, ey = _extent(objs)
    pad = 3 * edge_px + 2
    hit = (
        (objs["cx"] + ex + pad >= x0)
        & (objs["cx"] - ex - pad < x1)
        & (objs["cy"] + ey + pad >= y0)
        & (objs["cy"] - ey - pad < y1)
    )
    for i in np.flatnonzero(hit):
        o = objs[i]
        ya = max(y0, math.floor(o["cy"] - ey[i] - pad))
        yb = min(y1, math.ceil(o["cy"] + ey[i] + pad) + 1)
        xa = max(x0, math.floor(o["cx"] - ex[i] - pad))
        xb = min(x1, math.ceil(o["cx"] + ex[i] + pad) + 1)
        if ya >= yb or xa >= xb:
            continue
        dy = np.arange(ya, yb)[:, None] - o["cy"]
        dx = np.arange(xa, xb)[None, :] - o["cx"]
        c, s = math.cos(o["theta"]), math.sin(o["theta"])
        u = (dx * c + dy * s) / o["rx"]
        v = (-dx * s + dy * c) / o["ry"]
        q = np.sqrt(u * u + v * v)
        sl = (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))
        dist = (1.0 - q) * min(o["rx"], o["ry"])  # ~signed distance to the outline, px
        p = 1.0 / (1.0 + np.exp(-2.0 * dist / edge_px))
        np.maximum(prob[sl], p, out=prob[sl])
        np.maximum(energy[sl], np.clip(1.0 - q * q, 0, None), out=energy[sl])
        if n_classes > 1:
            # A class-0 object cuts a hole: its logit beats the others' plateau of 6.
            gain = 12.0 if o["cls"] == 0 else 6.0
            lg = logits[(*sl, int(o["cls"]))]
            np.maximum(lg, gain * np.clip(dist / edge_px, -1, 1), out=lg)
        own = (q < 1.0) & (q < qbest[sl])
        qbest[sl] = np.where(own, q, qbest[sl])
        labels[sl] = np.where(own, i + 1, labels[sl])
        hv[(*sl, 0)] = np.where(own, np.clip(dx / ex[i], -1, 1), hv[(*sl, 0)])
        hv[(*sl, 1)] = np.where(own, np.clip(dy / ey[i], -1, 1), hv[(*sl, 1)])
    types = np.zeros((h, w, max(n_classes, 1)), np.float32)
    cls_of = np.concatenate([[0], objs["cls"]]).astype(np.intp)
    lab_cls = cls_of[labels]
    inside = labels > 0
    if n_classes > 1:
        # Soft but unambiguous: 0.8 on the object's class, the rest spread over others.
        types[:] = np.where(inside[..., None], 0.2 / (n_classes - 1), 0.0)
        np.put_along_axis(types, lab_cls[..., None], np.where(inside, 0.8, 1.0)[..., None], 2)
        ex_l = np.exp(logits - logits.max(axis=2, keepdims=True))
        semantic = ex_l / ex_l.sum(axis=2, keepdims=True)
    else:
        types[..., 0] = prob
        semantic = prob[..., None].copy()
    return {
        "probability": prob[..., None],
        "energy": energy[..., None],
        "hv": hv,
        "type": types,
        "semantic": semantic.astype(np.float32),
        "labels": labels,
    }


def card(
    method: str,
    heads: dict[str, str],
    classes: Sequence[str] = ("Nucleus",),
    params: dict | None = None,
    mpp: float = 0.5,
    patch_output: tuple[int, int] = (64, 64),
    task: str = "nuclei",
) -> dict:
    """A model card (CONTRACTS.md) for a store whose heads are `heads` (name -> kind).

    The post-processing roles take the head of the matching kind: probability (or
    semantic for the semantic method), energy, hv and type.
    """
    n = len(classes)
    role_of_kind = {"probability": "probability", "energy": "energy", "hv": "hv", "type": "type"}
    if method == "semantic":
        role_of_kind = {"semantic": "probability"}
    roles = {role_of_kind[k]: name for name, k in heads.items() if k in role_of_kind}
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    activation = {"probability": "sigmoid", "energy": "none", "hv": "none"}
    head_list = [
        {
            "name": name,
            "channels": KINDS[k] or n,
            "activation": activation.get(k, "softmax"),
        }
        for name, k in heads.items()
    ]
    return {
        "name": f"synthetic-{method}",
        "kind": "dense",
        "description": "synthetic maps with known objects (tests and benchmarks)",
        "mpp": mpp,
        "patch_input": list(patch_output),
        "patch_output": list(patch_output),
        "input": {"scale": 255, "mean": [0.0] * 3, "std": [1.0] * 3},
        "heads": head_list,
        "postprocess": [
            {
                "task": task,
                "method": method,
                "heads": roles,
                "params": dict(params or {}),
                "classes": [{"name": c, "color": palette[i % 6]} for i, c in enumerate(classes)],
            }
        ],
        "source": {"builtin": "synthetic"},
    }


def write_maps(
    path: str | Path,
    objs: np.ndarray,
    shape: tuple[int, int],
    model: dict,
    heads: dict[str, str],
    *,
    band_rows: int = 256,
    scale: float = 1.0,
    slide_mpp: float | None = None,
    blank: Sequence[tuple[int, int, int, int]] = (),
    sample: str = "synthetic",
    encoding: str = "float32",
) -> Path:
    """Write a `maps.zarr` (CONTRACTS.md) of `objs` band by band.

    `heads` maps head name -> kind (see KINDS); `blank` boxes (y0, y1, x0, x1) get
    coverage 0 and all-zero heads, as outside tissue. `encoding` is merge's
    (`merge.encoding`: the stored types of histoflow.io.maps_zarr).
    """
    path = Path(path)
    h, w = shape
    mpp = float(model["mpp"])
    slide_mpp = slide_mpp if slide_mpp is not None else mpp / scale
    n_classes = len(model["postprocess"][0]["classes"])
    channels = {name: KINDS[k] or n_classes for name, k in heads.items()}
    attrs = {
        "sample": sample,
        "model": model,
        "weights_sha256": None,
        "mpp": mpp,
        "slide_mpp": slide_mpp,
        "scale": scale,
        "slide_dimensions": [math.ceil(w * scale), math.ceil(h * scale)],
        "shape": [h, w],
        "patch_input": model["patch_input"],
        "patch_output": model["patch_output"],
        "stride": model["patch_output"],
        "heads": model["heads"],
        "band_rows": band_rows,
        "versions": {},
        "encodings": (encodings := store_encodings(model["heads"], encoding, 1)),
    }
    group = zarr.open_group(path, mode="w", zarr_format=3, attributes=attrs)
    arrays = {
        name: group.create_array(
            name,
            shape=(h, w, c),
            chunks=(band_rows, w, c),
            dtype=encodings[name]["dtype"],
            fill_value=0,
        )
        for name, c in channels.items()
    }
    coverage = group.create_array(
        "coverage",
        shape=(h, w),
        chunks=(band_rows, w),
        dtype=encodings[COVERAGE]["dtype"],
        fill_value=0,
    )
    for y in range(0, h, band_rows):
        yb = min(h, y + band_rows)
        maps = render(objs, (y, yb, 0, w), n_classes=n_classes)
        cov = np.ones((yb - y, w), np.uint16)
        for by0, by1, bx0, bx1 in blank:
            cov[max(by0 - y, 0) : max(min(by1, yb) - y, 0), bx0:bx1] = 0
        for name, kind in heads.items():
            values = np.where(cov[..., None] > 0, maps[kind], 0).astype(np.float32)
            arrays[name][y:yb] = encode(values, encodings[name], name)
        coverage[y:yb] = cov
    return path

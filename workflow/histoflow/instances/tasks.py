"""Post-processing tasks read from the model card (`postprocess` list), checked against
the heads present in maps.zarr, with parameters converted from µm to model pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from histoflow.errors import ModelError
from histoflow.instances.hovernet_published import HoverParams, HoverStats

# Head roles each method needs (required, optional).
ROLES = {
    "semantic": ({"probability"}, set()),
    "watershed": ({"probability", "energy"}, {"type"}),
    "hovernet": ({"probability", "hv"}, {"type"}),
    "hovernet_fixed": ({"probability", "hv"}, {"type"}),
}

# Parameters each method accepts, with defaults. Lengths in µm, areas in µm².
DEFAULTS = {
    "semantic": {
        "min_area_um2": 0.0,  # regions smaller than this are dropped
        "min_hole_um2": 0.0,  # holes smaller than this are filled
        "ignore_classes": [],  # class names not turned into regions (e.g. Background)
        "simplify_px": 0.5,  # outline simplification tolerance, model pixels
    },
    "watershed": {
        "threshold": 0.5,  # foreground: probability >= threshold
        "min_area_um2": 10.0,
        "max_area_um2": None,
        "min_distance_um": 3.0,  # markers: energy maxima within this radius (square window)
        "marker_threshold": None,  # markers need energy >= this
        "smooth_um": 0.0,  # Gaussian sigma applied to energy before finding markers
        "fill_holes": True,
        "background_class": None,  # type-head channel never voted for (HoVer-Net: 0)
        "simplify_px": 0.0,  # outline simplification tolerance, model pixels (0: exact)
    },
    # The published algorithm (`hovernet_published`); sizes in model pixels, as published.
    "hovernet": {
        "threshold": 0.5,  # foreground: nucleus probability >= threshold
        "energy_threshold": 0.4,  # markers: foreground where the energy is below this
        # Resolution factor of the published sizes: Sobel kernel int(20 s + 1) px, markers
        # and blobs of at least ceil(10 s^2) px (TIAToolbox runs HoVer-Net+ at 0.5).
        "scale_factor": 1.0,
        "simplify_px": 0.0,
    },
    # histoflow's earlier variant: a fixed gradient threshold, no window statistics.
    "hovernet_fixed": {
        "threshold": 0.5,
        "min_area_um2": 10.0,
        "max_area_um2": None,
        "boundary_threshold": 0.15,  # fall of an hv map per pixel that marks a boundary
        "gradient_sigma_px": 1.0,  # Gaussian derivative scale for the hv gradients
        "marker_radius_px": 1,  # opening radius that cleans markers
        "min_marker_um2": 2.5,
        "fill_holes": True,
        "background_class": 0,
        "simplify_px": 0.0,
    },
}


@dataclass(frozen=True)
class Task:
    """One post-processing task, ready to run on windows of the maps."""

    name: str
    method: str
    heads: dict[str, str]  # role -> head name in maps.zarr
    params: dict  # card params merged over DEFAULTS
    classes: list[dict]  # [{name, color}], index = class_id
    mpp: float
    px: dict = field(default_factory=dict)  # derived sizes in model pixels
    # hovernet: the whole map's extremes to normalise by (None: each window's own)
    hover_stats: HoverStats | None = None

    @property
    def kind(self) -> str:
        """'regions' for semantic tasks, 'instances' for the others."""
        return "regions" if self.method == "semantic" else "instances"

    @property
    def halo(self) -> int:
        """Pixels of context one output pixel's value depends on (beyond its object)."""
        p = self.px
        if self.method == "watershed":
            # scipy truncates Gaussians at 4 sigma
            return p["min_distance"] + math.ceil(4 * p["smooth_sigma"]) + 1
        if self.method == "hovernet":
            # Sobel kernel (ksize // 2), marker opening (2 radii), 3x3 blur, plus one
            hover = self.hover_params()
            return hover.ksize // 2 + 2 * (hover.open_size // 2) + 2
        if self.method == "hovernet_fixed":
            # gradients (4 sigma), marker opening (2 radii), surface blur (4 px)
            return math.ceil(4 * self.params["gradient_sigma_px"]) + 2 * p["marker_radius"] + 5
        return 1

    def hover_params(self) -> HoverParams:
        """The published post-processing's parameters (method `hovernet`)."""
        p = self.params
        return HoverParams.scaled(
            float(p["scale_factor"]),
            threshold=float(p["threshold"]),
            energy_threshold=float(p["energy_threshold"]),
        )


def _px(method: str, params: dict, mpp: float) -> dict:
    area = 1.0 / (mpp * mpp)
    px = {}
    for key in ("min_area_um2", "max_area_um2", "min_hole_um2", "min_marker_um2"):
        if key in params:
            v = params[key]
            px[key.removesuffix("_um2")] = None if v is None else float(v) * area
    if method == "watershed":
        px["min_distance"] = max(1, round(float(params["min_distance_um"]) / mpp))
        px["smooth_sigma"] = float(params["smooth_um"]) / mpp
    if method == "hovernet_fixed":
        px["marker_radius"] = int(params["marker_radius_px"])
    return px


def _task_name(entry, where: str, seen: set) -> str:
    if not isinstance(entry, dict):
        raise ModelError(f"{where}: must be a mapping")
    task = str(entry.get("task", ""))
    if not task or task in seen or "-" in task:
        raise ModelError(f"{where}.task: need a unique name without '-', got '{task}'")
    method = entry.get("method")
    if method not in ROLES:
        raise ModelError(f"{where}.method: '{method}' is not one of {', '.join(ROLES)}")
    return task


def _checked_heads(entry: dict, where: str, channels: dict[str, int]) -> dict[str, str]:
    method = entry["method"]
    required, optional = ROLES[method]
    heads = dict(entry.get("heads") or {})
    missing = sorted(required - heads.keys())
    unknown = sorted(heads.keys() - required - optional)
    if missing or unknown:
        raise ModelError(
            f"{where}.heads: {method} needs roles {sorted(required)}"
            + (f" (optional {sorted(optional)})" if optional else "")
            + f"; missing {missing}, unknown {unknown}"
        )
    for role, head in heads.items():
        if head not in channels:
            raise ModelError(
                f"{where}.heads.{role}: head '{head}' is not in maps.zarr "
                f"(heads: {', '.join(sorted(channels))})"
            )
    if "hv" in heads and channels[heads["hv"]] != 2:
        raise ModelError(f"{where}.heads.hv: head '{heads['hv']}' must have 2 channels")
    return heads


def _checked_classes(
    entry: dict, where: str, heads: dict[str, str], channels: dict[str, int]
) -> list[dict]:
    classes = entry.get("classes") or []
    if not classes or not all(isinstance(c, dict) and "name" in c for c in classes):
        raise ModelError(f"{where}.classes: need a list of {{name, color}}")
    if len(classes) > 255:
        raise ModelError(f"{where}.classes: at most 255 classes")
    # Heads with one channel per class: the type head, and a semantic task's probability.
    per_class = ["type"] if "type" in heads else []
    per_class += ["probability"] if entry["method"] == "semantic" else []
    for role in per_class:
        head = heads[role]
        if channels[head] != len(classes):
            raise ModelError(
                f"{where}.heads.{role}: head '{head}' has {channels[head]} "
                f"channels but the task lists {len(classes)} classes"
            )
    return [{"name": str(c["name"]), "color": c.get("color")} for c in classes]


def _checked_params(entry: dict, where: str, classes: list[dict]) -> dict:
    method = entry["method"]
    given = dict(entry.get("params") or {})
    bad = sorted(given.keys() - DEFAULTS[method].keys())
    if bad:
        raise ModelError(
            f"{where}.params: unknown {bad} for {method} "
            f"(known: {', '.join(sorted(DEFAULTS[method]))})"
        )
    params = {**DEFAULTS[method], **given}
    ignored = set(params.get("ignore_classes") or [])
    if ignored - {c["name"] for c in classes}:
        raise ModelError(f"{where}.params.ignore_classes: {sorted(ignored)} not all classes")
    if method == "hovernet":
        _check_hover(params, where)
    bg = params.get("background_class")
    if bg is not None and not 0 <= int(bg) < len(classes):
        raise ModelError(f"{where}.params.background_class: {bg} is not a class index")
    return params


def _check_hover(params: dict, where: str) -> None:
    s = params["scale_factor"]
    ksize = int(20 * float(s) + 1) if isinstance(s, int | float) and s > 0 else 0
    if ksize < 3 or ksize % 2 == 0:
        raise ModelError(
            f"{where}.params.scale_factor: {s} gives a Sobel kernel of {ksize} px; "
            "int(20 * scale_factor + 1) must be odd and at least 3 (e.g. 1.0, 0.5, 0.25)"
        )


def _task(entry: dict, where: str, name: str, channels: dict[str, int], mpp: float) -> Task:
    heads = _checked_heads(entry, where, channels)
    classes = _checked_classes(entry, where, heads, channels)
    params = _checked_params(entry, where, classes)
    method = entry["method"]
    return Task(
        name=name,
        method=method,
        heads=heads,
        params=params,
        classes=classes,
        mpp=float(mpp),
        px=_px(method, params, float(mpp)),
    )


def tasks_from_card(model: dict, channels: dict[str, int], mpp: float) -> list[Task]:
    """Tasks of the card's `postprocess` list; `channels` maps head name -> channels."""
    name = model.get("name", "?")
    entries = model.get("postprocess") or []
    if not isinstance(entries, list) or not entries:
        raise ModelError(f"model card '{name}': field 'postprocess' lists no task")
    tasks: list[Task] = []
    for i, entry in enumerate(entries):
        where = f"model card '{name}': postprocess[{i}]"
        task = _task_name(entry, where, {t.name for t in tasks})
        tasks.append(_task(entry, where, task, channels, mpp))
    n_semantic = sum(t.method == "semantic" for t in tasks)
    if n_semantic > 1:
        # classmap.zarr holds one (H, W) class map (CONTRACTS.md).
        raise ModelError(f"model card '{name}': at most one semantic task, got {n_semantic}")
    return tasks

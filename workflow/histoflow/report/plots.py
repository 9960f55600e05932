"""Cohort plots as inline SVG (matplotlib): density per class and nucleus-size
distributions. Fixed hash salt, no date and seeded jitter keep the SVG bytes equal
between reruns."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from histoflow.report.sizes import AREA_EDGES_UM2, bin_centres

RC = {"svg.hashsalt": "histoflow", "svg.fonttype": "none", "font.size": 9}


def class_label(key: tuple[str, str], keys: list[tuple[str, str]]) -> str:
    """The class name, prefixed with its task when the cohort has several tasks."""
    several = len({task for task, _ in keys}) > 1
    return f"{key[0]}: {key[1]}" if several else key[1]


def _svg(fig: Figure) -> str:
    buffer = io.StringIO()
    with matplotlib.rc_context(RC):
        fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # inline: no XML declaration or doctype


def density_plot(records: list[dict], keys: list[tuple[str, str]]) -> str | None:
    """Box plot of objects per mm² per class over the finished slides, with one dot per
    slide; None when no slide has a density."""
    series = []
    for key in keys:
        values = [
            r["classes"][key] / r["tissue_area_mm2"]
            for r in records
            if r["status"] == "ok" and key in r.get("classes", {}) and r.get("tissue_area_mm2")
        ]
        series.append(values)
    if not any(series):
        return None
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(1.6 + 0.9 * len(keys), 3.0))
        ax = fig.add_subplot()
        ax.boxplot(series, showfliers=False, widths=0.5)
        rng = np.random.default_rng(0)  # jitter of the dots, the same on every run
        for i, values in enumerate(series, start=1):
            x = i + rng.uniform(-0.15, 0.15, len(values))
            ax.plot(x, values, ".", alpha=0.6, markersize=6 if len(values) < 100 else 2)
        ax.set_xticks(range(1, len(keys) + 1), [class_label(k, keys) for k in keys])
        ax.set_ylabel("objects per mm² of tissue")
        ax.set_title("Density per class (one dot per slide)")
        return _svg(fig)


def size_plot(records: list[dict], keys: list[tuple[str, str]]) -> str | None:
    """Distribution of object areas (µm²) per class pooled over the cohort, as the
    fraction of the class's objects per bin; None without objects."""
    totals = {}
    for key in keys:
        hists = [r["sizes"][key]["hist"] for r in records if key in r.get("sizes", {})]
        if hists:
            totals[key] = np.sum(hists, axis=0)
    if not totals:
        return None
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(5.0, 3.0))
        ax = fig.add_subplot()
        for key, counts in totals.items():
            n = int(counts.sum())
            ax.step(bin_centres(), counts / n, where="mid", label=f"{class_label(key, keys)} ({n})")
        ax.set_xscale("log")
        ax.set_xlim(AREA_EDGES_UM2[0], AREA_EDGES_UM2[-1])
        ax.set_xlabel("object area (µm²)")
        ax.set_ylabel("fraction of objects")
        ax.set_title("Nucleus size per class (all slides)")
        ax.legend(frameon=False)
        return _svg(fig)

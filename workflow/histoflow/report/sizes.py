"""Nucleus (object) areas per class from an instance table, in µm².

Each slide gives a histogram over fixed bins (so slides add up without keeping every
area) and the median area of each class.
"""

from __future__ import annotations

import numpy as np

from histoflow.io.instance_table import InstanceTable

# Bin edges in µm²: 1 to 10⁴, 20 bins per decade (log-spaced), the same for every slide.
AREA_EDGES_UM2 = np.logspace(0, 4, 81)


def bin_centres() -> np.ndarray:
    """Geometric centre of each area bin (µm²)."""
    return np.sqrt(AREA_EDGES_UM2[:-1] * AREA_EDGES_UM2[1:])


def area_stats(table: InstanceTable) -> tuple[dict[tuple[str, str], dict], float | None]:
    """Per (task, class) with objects: {"hist": counts per AREA_EDGES_UM2 bin (areas
    outside the range in the first or last bin), "median": median area in µm²}; and
    the median area over all objects (None without objects)."""
    data = table.read(columns=("task", "class_name", "area_px"))
    um2 = data["area_px"].to_numpy(zero_copy_only=False) * table.slide_mpp**2
    tasks = np.asarray(data["task"].to_pylist(), dtype=object)
    names = np.asarray(data["class_name"].to_pylist(), dtype=object)
    clipped = np.clip(um2, AREA_EDGES_UM2[0], AREA_EDGES_UM2[-1])
    stats = {}
    for key in sorted(set(zip(tasks.tolist(), names.tolist()))):
        pick = (tasks == key[0]) & (names == key[1])
        hist, _ = np.histogram(clipped[pick], bins=AREA_EDGES_UM2)
        stats[key] = {"hist": hist.astype(int).tolist(), "median": float(np.median(um2[pick]))}
    return stats, (float(np.median(um2)) if len(um2) else None)

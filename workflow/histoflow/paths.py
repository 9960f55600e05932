"""The per-sample file layout under results/, logs/ and benchmarks/.

One home for every path the rules declare and the engine opens (see
workflow/CONTRACTS.md for what each file holds). Rules take string patterns with a
`{sample}` wildcard from `SamplePaths.pattern(name)`; engine code builds
`SamplePaths(sample)` and reads the attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Sample ID reserved for the cohort-level outputs (samples.schema.yaml rejects it).
COHORT = "cohort"
# Folders of the job logs and of Snakemake's benchmark files, beside results/.
LOGS = "logs"
BENCHMARKS = "benchmarks"

# Files of one sample, relative to results/<sample>/.
LAYOUT = {
    "mask_png": "mask/mask.png",
    "thumbnail_png": "mask/thumbnail.png",
    "mask_overlay_png": "mask/overlay.png",
    "mask_json": "mask/mask.json",
    "raw_zarr": "infer/raw.zarr",
    "maps_zarr": "merge/maps.zarr",
    "heatmap_png": "merge/heatmap.png",
    "instances_parquet": "instances/instances.parquet",
    "instances_overlay_png": "instances/overlay.png",
    "classmap_zarr": "instances/classmap.zarr",
    "cells_parquet": "cells/cells.parquet",
    "cells_graph_parquet": "cells/graph.parquet",
    "cells_h5ad": "cells/cells.h5ad",
    "tiles_dir": "tiles",
    "tiles_json": "tiles/tiles.json",
    "tile_map_zarr": "tiles/map.zarr",
    "manifest_json": "manifest.json",
    "run_json": "run.json",
}

# Export formats: file name under results/<sample>/export/ ("{sample}" is the ID).
EXPORTS = {
    "geojson": "{sample}.geojson",
    "cells": "{sample}.cells.geojson",
    "sqlite": "{sample}.sqlite",
    "tsv": "{sample}.objects.tsv",
    "summary": "{sample}.summary.tsv",
    "zarr": "{sample}.zarr",
    "hdf5": "{sample}.h5",
    "npz": "{sample}.npz",
    "ometiff": "{sample}.ome.tif",
    "tiles_ometiff": "{sample}.tiles.ome.tif",
    "tiles_png": "{sample}.tiles.png",
}

# Per-tile stores: file name under results/<sample>/tiles/.
TILE_STORES = {
    "hdf5": "{sample}.h5",
    "zarr": "{sample}.zarr",
    "npz": "{sample}.npz",
}

# MultiQC custom-content sections the cohort stage writes (histoflow.report.multiqc).
MULTIQC_SECTIONS = ("general_stats", "objects", "density", "nucleus_area", "qc")


def _named(table: dict[str, str], kind: str, key: str) -> str:
    if key not in table:
        raise KeyError(f"unknown {kind} '{key}' (known: {', '.join(table)})")
    return table[key]


@dataclass(frozen=True)
class SamplePaths:
    """Every file of one sample: `SamplePaths("S1").maps_zarr` -> results/S1/merge/maps.zarr."""

    sample: str
    results: str = "results"

    @property
    def root(self) -> Path:
        """The sample's folder, results/<sample>/."""
        return Path(self.results) / self.sample

    def __getattr__(self, name: str) -> Path:
        # Only reached for names that are not fields or methods: the LAYOUT entries.
        if name.startswith("__") or name not in LAYOUT:
            raise AttributeError(f"{type(self).__name__} has no path '{name}'")
        return self.root / LAYOUT[name]

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(LAYOUT))

    def export(self, fmt: str) -> Path:
        """The export file of format `fmt` (a key of EXPORTS)."""
        name = _named(EXPORTS, "export format", fmt)
        return self.root / "export" / name.format(sample=self.sample)

    def geojson(self, fmt: str = "geojson", gzip: bool = False) -> Path:
        """A GeoJSON export (`geojson` detections or `cells`), `.gz` with `gzip`."""
        path = self.export(fmt)
        return path.with_name(path.name + ".gz") if gzip else path

    def tile_store(self, fmt: str) -> Path:
        """The per-tile store of format `fmt` (a key of TILE_STORES)."""
        name = _named(TILE_STORES, "tile store format", fmt)
        return self.root / "tiles" / name.format(sample=self.sample)

    @classmethod
    def pattern(cls, name: str, *args: str, results: str = "results") -> str:
        """The path `name` (with `args`, e.g. an export format) with a `{sample}` wildcard."""
        value = getattr(cls("{sample}", results), name)
        return str(value(*args) if callable(value) else value)


@dataclass(frozen=True)
class CohortPaths:
    """The cohort-level files, under results/cohort/."""

    results: str = "results"

    @property
    def root(self) -> Path:
        """results/cohort/."""
        return Path(self.results) / COHORT

    @property
    def summary_tsv(self) -> Path:
        """The cohort table (one row per slide)."""
        return self.root / "summary.tsv"

    @property
    def cells_tsv(self) -> Path:
        """The per-class cells table (one row per slide and class)."""
        return self.root / "cells.tsv"

    @property
    def summary_html(self) -> Path:
        """The cohort table as an HTML page."""
        return self.root / "summary.html"

    @property
    def report_html(self) -> Path:
        """The cohort report page: gallery, table, plots and QC flags."""
        return self.root / "report.html"

    def multiqc(self, section: str) -> Path:
        """The MultiQC custom-content file of one section (see MULTIQC_SECTIONS)."""
        _named({s: s for s in MULTIQC_SECTIONS}, "MultiQC section", section)
        return self.root / "multiqc" / f"histoflow_{section}_mqc.yaml"


def log_path(rule: str, sample: str, logs: str = LOGS) -> Path:
    """The log file of one job: logs/<rule>/<sample>.log."""
    return Path(logs) / rule / f"{sample}.log"


def benchmark_path(rule: str, sample: str, benchmarks: str = BENCHMARKS) -> Path:
    """The Snakemake benchmark file of one job: benchmarks/<rule>/<sample>.tsv."""
    return Path(benchmarks) / rule / f"{sample}.tsv"

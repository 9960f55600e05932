"""manifest.json: what produced a slide's results, with no times, hosts or run paths.

The input slide's size and sha256, the sheet row, the effective config, the model
card and weights sha256 (from the `raw.zarr` or `maps.zarr` attributes, when the
inference stage ran), package versions, and the list of outputs present. Same
inputs, config, model and software give the same bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from histoflow.io.atomic import atomic_output
from histoflow.io.maps_zarr import read_maps_attrs
from histoflow.io.mask_files import read_mask_meta
from histoflow.io.raw_zarr import read_raw_attrs
from histoflow.manifest.fingerprint import fingerprint
from histoflow.paths import LAYOUT, SamplePaths
from histoflow.versions import package_versions

MANIFEST_VERSION = 1
# Files of a slide's folder that are not results of a stage.
OWN_FILES = (LAYOUT["manifest_json"], LAYOUT["run_json"])
# Sheet fields recorded as given.
SHEET_FIELDS = ("path", "mpp", "mask")
# mask.json fields recorded: the slide geometry as the mask stage read it.
SLIDE_FIELDS = ("slide_dimensions", "mpp", "mpp_source", "thumbnail_mpp", "method")
# Stores that may hold the model card, first hit wins, with their attribute readers.
MODEL_STORES = (("raw_zarr", read_raw_attrs), ("maps_zarr", read_maps_attrs))


def sample_paths(sample_dir: str | os.PathLike) -> SamplePaths:
    """The layout of the slide folder `sample_dir` (results/<sample>)."""
    sample_dir = Path(sample_dir)
    return SamplePaths(sample_dir.name, str(sample_dir.parent))


def model_provenance(sample_dir: str | os.PathLike) -> dict | None:
    """Model card, weights sha256 and inference-time versions, if inference ran.

    raw.zarr first: merge copies all its attributes into maps.zarr, so the card
    survives in maps.zarr when raw.zarr was temporary.
    """
    paths = sample_paths(sample_dir)
    for name, read_attrs in MODEL_STORES:
        attrs = read_attrs(getattr(paths, name))
        if attrs and "model" in attrs:
            return {
                "source": LAYOUT[name],
                "card": attrs["model"],
                "weights_sha256": attrs.get("weights_sha256"),
                "mpp": attrs.get("mpp"),
                "versions": attrs.get("versions"),
            }
    return None


def slide_facts(sample_dir: str | os.PathLike) -> dict | None:
    """Slide geometry as the mask stage read it (dimensions, mpp and where it came from)."""
    meta = sample_paths(sample_dir).mask_json
    if not meta.is_file():
        return None
    data = read_mask_meta(meta)
    return {key: data.get(key) for key in SLIDE_FIELDS}


def list_outputs(sample_dir: str | os.PathLike) -> list[str]:
    """Stage outputs in a slide folder: files, and Zarr stores as one entry each."""
    root = Path(sample_dir)
    return _walk(root, root) if root.is_dir() else []


def _walk(root: Path, folder: Path) -> list[str]:
    found: list[str] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue  # temporaries of atomic writes
        rel = entry.relative_to(root).as_posix()
        if entry.is_dir() and entry.suffix == ".zarr":
            found.append(rel + "/")
        elif entry.is_dir():
            found += _walk(root, entry)
        elif rel not in OWN_FILES:
            found.append(rel)
    return found


def build_manifest(
    sample: str,
    sheet_row: dict,
    config: dict,
    sample_dir: str | os.PathLike,
    checksum: str = "sha256",
) -> dict:
    """The deterministic manifest of one slide: no times, hosts or absolute run paths."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "sample": sample,
        "sheet": {key: sheet_row.get(key) for key in SHEET_FIELDS},
        "input": {
            "slide": fingerprint(sheet_row.get("path"), checksum),
            "mask": fingerprint(sheet_row.get("mask"), checksum),
        },
        "slide": slide_facts(sample_dir),
        "config": config,
        "model": model_provenance(sample_dir),
        "software": package_versions(),
        "outputs": list_outputs(sample_dir),
    }


def write_json(data: dict, path: str | os.PathLike) -> None:
    """Sorted keys, fixed indent, trailing newline: equal data gives equal bytes."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text + "\n", encoding="utf-8")

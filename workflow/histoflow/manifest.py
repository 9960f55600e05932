"""Per-slide provenance: what produced a slide's results, kept apart from when and how fast.

Two files per slide, so the reproducible part can be compared byte for byte:

- `manifest.json` (deterministic): the input slide's size and sha256, the sheet row,
  the effective config, the model card and weights sha256 (from `raw.zarr` or
  `maps.zarr` attributes, when the inference stage ran), software versions, and
  the list of outputs present. Same inputs, config, model and software give the
  same bytes.
- `run.json` (differs on every run): per-rule wall times and peak memory from
  `benchmarks/<rule>/<sample>.tsv`, host, SLURM job id, workflow git commit, time.

`compare_trees` checks that two results folders hold the same results: bytes where
the format is deterministic, decoded content where a container stores timestamps.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from histoflow.io.atomic import atomic_output

MANIFEST_VERSION = 1
CHUNK = 8 << 20
FAST_SPAN = 1 << 20
# Distributions whose versions decide the numbers in the results.
SOFTWARE = (
    "histoflow",
    "snakemake",
    "numpy",
    "scipy",
    "scikit-image",
    "pillow",
    "openslide-python",
    "openslide-bin",
    "torch",
    "zarr",
    "numcodecs",
    "h5py",
    "pandas",
    "pyarrow",
    "shapely",
    "tifffile",
    "imagecodecs",
)
# Where the model card lives, first hit wins: merge copies all raw.zarr attributes,
# so the card survives when raw.zarr is temporary.
MODEL_STORES = ("infer/raw.zarr", "merge/maps.zarr")
# Files of a slide's folder that are not results of a stage.
OWN_FILES = ("manifest.json", "run.json")


# --- fingerprints -------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fast_sha256(path: str | os.PathLike, span: int = FAST_SPAN) -> str:
    """sha256 of the first and last `span` bytes and the size: O(1) in the file size.

    Catches a replaced or truncated slide, not a change in the middle of it; for
    archives of multi-GB slides where a full hash costs minutes per slide.
    """
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(span))
        if size > span:
            fh.seek(max(span, size - span))
            digest.update(fh.read(span))
    return digest.hexdigest()


def tree_digest(path: str | os.PathLike, hasher: Callable[[Path], str] = sha256_file) -> str:
    """One sha256 over the sorted (relative path, file hash) pairs of a folder."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(root).as_posix()}\0{hasher(file)}\n".encode())
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike | None, method: str = "sha256") -> dict | None:
    """Size and hash of an input file (`sha256` full, or `fast`: see fast_sha256).

    MIRAX slides (.mrxs) keep their pixels in a sibling folder of the same stem; its
    files are hashed too, so a changed .dat file is noticed.
    """
    if not path:
        return None
    path = Path(path)
    if method not in ("sha256", "fast"):
        raise ValueError(f"unknown fingerprint method '{method}' (sha256 or fast)")
    hasher = sha256_file if method == "sha256" else fast_sha256
    record: dict = {
        "path": str(path),
        "bytes": path.stat().st_size,
        "method": method,
        "sha256": hasher(path),
    }
    companion = path.with_suffix("")
    if path.suffix.lower() == ".mrxs" and companion.is_dir():
        record["companion"] = {
            "path": str(companion),
            "bytes": sum(p.stat().st_size for p in companion.rglob("*") if p.is_file()),
            "sha256": tree_digest(companion, hasher),
        }
    return record


# --- what produced the results -------------------------------------------------------


def software_versions() -> dict:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in SOFTWARE:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        import openslide

        versions["openslide-library"] = openslide.__library_version__
    except Exception:  # noqa: BLE001 - no OpenSlide library is a fact to record, not an error
        versions["openslide-library"] = None
    return versions


def read_store_attrs(store: str | os.PathLike) -> dict | None:
    """Attributes of a Zarr group (v3 `zarr.json`, or v2 `.zattrs`) without opening it."""
    store = Path(store)
    v3 = store / "zarr.json"
    if v3.is_file():
        return json.loads(v3.read_text()).get("attributes", {})
    v2 = store / ".zattrs"
    if v2.is_file():
        return json.loads(v2.read_text())
    return None


def model_provenance(sample_dir: str | os.PathLike) -> dict | None:
    """Model card, weights sha256 and inference-time versions, if inference ran."""
    for rel in MODEL_STORES:
        attrs = read_store_attrs(Path(sample_dir) / rel)
        if attrs and "model" in attrs:
            return {
                "source": rel,
                "card": attrs["model"],
                "weights_sha256": attrs.get("weights_sha256"),
                "mpp": attrs.get("mpp"),
                "versions": attrs.get("versions"),
            }
    return None


def slide_facts(sample_dir: str | os.PathLike) -> dict | None:
    """Slide geometry as the mask stage read it (dimensions, mpp and where it came from)."""
    meta = Path(sample_dir) / "mask" / "mask.json"
    if not meta.is_file():
        return None
    data = json.loads(meta.read_text())
    keys = ("slide_dimensions", "mpp", "mpp_source", "thumbnail_mpp", "method")
    return {key: data.get(key) for key in keys}


def list_outputs(sample_dir: str | os.PathLike) -> list[str]:
    """Stage outputs in a slide folder: files, and Zarr stores as one entry each."""
    root = Path(sample_dir)
    found: list[str] = []

    def walk(folder: Path) -> None:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue  # temporaries of atomic writes
            rel = entry.relative_to(root).as_posix()
            if entry.is_dir():
                if entry.suffix == ".zarr":
                    found.append(rel + "/")
                else:
                    walk(entry)
            elif rel not in OWN_FILES:
                found.append(rel)

    if root.is_dir():
        walk(root)
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
        "sheet": {key: sheet_row.get(key) for key in ("path", "mpp", "mask")},
        "input": {
            "slide": fingerprint(sheet_row.get("path"), checksum),
            "mask": fingerprint(sheet_row.get("mask"), checksum),
        },
        "slide": slide_facts(sample_dir),
        "config": config,
        "model": model_provenance(sample_dir),
        "software": software_versions(),
        "outputs": list_outputs(sample_dir),
    }


# --- when, where, how long -----------------------------------------------------------


def read_benchmark(path: str | os.PathLike) -> dict:
    """Mean wall seconds (`s`) and peak RSS (`max_rss`, MB) of a Snakemake benchmark file."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    out: dict[str, float | None] = {}
    for key in ("s", "max_rss"):
        values = []
        for row in rows:
            try:
                values.append(float(row[key]))
            except (KeyError, TypeError, ValueError):
                continue  # "NA" where psutil could not measure
        out[key] = sum(values) / len(values) if values else None
    return out


def rule_timings(benchmarks_dir: str | os.PathLike, sample: str) -> dict[str, dict]:
    """rule -> {"s", "max_rss"} for every `benchmarks/<rule>/<sample>.tsv` present."""
    root = Path(benchmarks_dir)
    timings = {}
    if root.is_dir():
        for path in sorted(root.glob(f"*/{sample}.tsv")):
            try:
                timings[path.parent.name] = read_benchmark(path)
            except OSError:
                continue
    return timings


def workflow_commit(basedir: str | os.PathLike) -> dict | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(basedir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(basedir), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def build_run_info(
    sample: str, benchmarks_dir: str | os.PathLike, workflow_dir: str | os.PathLike
) -> dict:
    timings = rule_timings(benchmarks_dir, sample)
    return {
        "sample": sample,
        "wall_seconds": {rule: t["s"] for rule, t in timings.items()},
        "max_rss_mb": {rule: t["max_rss"] for rule, t in timings.items()},
        "host": platform.node(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "workflow": workflow_commit(workflow_dir),
        "written_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def write_json(data: dict, path: str | os.PathLike) -> None:
    """Sorted keys, fixed indent, trailing newline: equal data gives equal bytes."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text + "\n", encoding="utf-8")


# --- comparing two results folders ---------------------------------------------------

# Files that record the run, not its results.
RUN_RECORDS = ("*/run.json",)
# Columns of the cohort table that are wall times (end in "_s").
TIMING_SUFFIX = "_s"


def _decode_tsv(path: Path) -> list[list[str]]:
    """Rows of a TSV without wall-time columns (`*_s`): the cohort table."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    if not rows:
        return rows
    keep = [i for i, name in enumerate(rows[0]) if not name.endswith(TIMING_SUFFIX)]
    return [[row[i] for i in keep if i < len(row)] for row in rows]


def _decode_html(path: Path) -> str:
    """Cohort HTML table without wall-time cells (marked class="time")."""
    text = path.read_text(encoding="utf-8")
    return re.sub(r'<(td|th) class="time"[^>]*>.*?</\1>', "", text, flags=re.S)


def _decode_hdf5(path: Path):
    import h5py
    import numpy as np

    def attrs(obj) -> dict:
        return {k: np.asarray(v).tolist() for k, v in sorted(obj.attrs.items())}

    items = {}
    with h5py.File(path, "r") as fh:
        items["/"] = (attrs(fh), None)

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                data = np.asarray(obj[()])
                items[name] = (attrs(obj), str(data.dtype), data.shape, data.tobytes())
            else:
                items[name] = (attrs(obj), None)

        fh.visititems(visit)
    return items


def _decode_sqlite(path: Path):
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def _decode_tiff(path: Path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return [(page.shape, page.asarray().tobytes()) for page in tif.pages]


def _decode_parquet(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# Formats compared by content when their bytes differ, with the reason they may.
DECODERS: dict[str, Callable[[Path], object]] = {
    ".tsv": _decode_tsv,  # cohort summary: wall-time columns differ on every run
    ".html": _decode_html,  # cohort summary table: same
    ".h5": _decode_hdf5,  # HDF5 object headers may carry modification times
    ".hdf5": _decode_hdf5,
    ".sqlite": _decode_sqlite,  # page layout may differ, rows must not
    ".db": _decode_sqlite,
    ".tif": _decode_tiff,  # a DateTime tag may be written
    ".tiff": _decode_tiff,
    ".parquet": _decode_parquet,  # created_by holds the writer version
}


def compare_trees(
    first: str | os.PathLike,
    second: str | os.PathLike,
    ignore: tuple[str, ...] = RUN_RECORDS,
) -> dict[str, str]:
    """Compare every file under two results folders.

    Returns relative path -> verdict: "bytes" (identical bytes), "decoded"
    (bytes differ, content equal after decoding, see DECODERS), "ignored" (a run
    record, see RUN_RECORDS), or a message starting with "DIFFERS"/"MISSING".
    """
    a_root, b_root = Path(first), Path(second)

    def files(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    verdicts: dict[str, str] = {}
    a_files, b_files = files(a_root), files(b_root)
    for rel in sorted(a_files | b_files):
        if any(Path(rel).match(pattern) for pattern in ignore):
            verdicts[rel] = "ignored"
            continue
        if rel not in a_files or rel not in b_files:
            verdicts[rel] = f"MISSING in {'second' if rel in a_files else 'first'}"
            continue
        a, b = a_root / rel, b_root / rel
        if a.read_bytes() == b.read_bytes():
            verdicts[rel] = "bytes"
            continue
        decoder = DECODERS.get(a.suffix.lower())
        if decoder is None:
            verdicts[rel] = "DIFFERS (bytes, no decoder for this format)"
        elif repr(decoder(a)) == repr(decoder(b)):  # repr: NaN equals NaN
            verdicts[rel] = "decoded"
        else:
            verdicts[rel] = "DIFFERS (decoded content)"
    return verdicts


def main(argv: list[str] | None = None) -> int:
    """`python -m histoflow.manifest compare OLD NEW`: exit 1 if any result differs."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m histoflow.manifest")
    sub = parser.add_subparsers(dest="command", required=True)
    cmp = sub.add_parser("compare", help="compare two results folders")
    cmp.add_argument("first")
    cmp.add_argument("second")
    args = parser.parse_args(argv)
    verdicts = compare_trees(args.first, args.second)
    bad = 0
    for path, verdict in verdicts.items():
        print(f"{verdict}\t{path}")
        bad += verdict.startswith(("DIFFERS", "MISSING"))
    counts = {v: sum(x == v for x in verdicts.values()) for v in ("bytes", "decoded", "ignored")}
    print(
        f"{len(verdicts)} files: {counts['bytes']} identical bytes, {counts['decoded']} equal "
        f"decoded, {counts['ignored']} run records ignored, {bad} different"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

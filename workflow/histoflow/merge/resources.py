"""threads and mem_mb for the merge_patches rule, from raw.zarr's attributes.

Reads only raw.zarr's attributes (`histoflow.io.raw_zarr.read_raw_attrs`), so the
rule files can call it cheaply. Snakemake re-evaluates resources once the input exists;
before that (dry run), a fallback is reported.
"""

from __future__ import annotations

import math

from histoflow.io.raw_zarr import read_raw_attrs
from histoflow.merge.memory import MB
from histoflow.merge.options import READ_BATCH

BASE_MB = 300  # interpreter, numpy, zarr, codecs
FALLBACK_MEM_MB = 2000
FALLBACK_THREADS = 1
BACKGROUND_WRITE_BYTES = 8 * MB  # below this, a writer thread costs more than it saves


# Canvases and chunk buffers of one column window: the merge walks the slide in
# windows this many bytes wide (whole maps.zarr chunks), so its memory stops growing
# with the slide's width once the slide is wider than one window.
WINDOW_BYTES = 256 * MB


def _geometry(attrs: dict, band_rows: int | None) -> tuple[int, int, int, int]:
    h, w = (int(v) for v in attrs["patch_output"])
    channels = sum(int(head["channels"]) for head in attrs["heads"])
    rows = int(band_rows or attrs.get("stride", [h])[0] or h)
    return h, w, channels, rows


def window_columns(attrs: dict, band_rows: int | None = None, buffer_sets: int = 2) -> int:
    """Columns of a merge window whose two band canvases and `buffer_sets` sets of chunk
    buffers fit WINDOW_BYTES (before rounding down to whole chunks, at least one)."""
    h, _, channels, rows = _geometry(attrs, band_rows)
    per_column = 2 * h * (4 * channels + 2) + buffer_sets * rows * 4 * (channels + 1)
    return max(1, WINDOW_BYTES // per_column)


def band_bytes(attrs: dict, band_rows: int | None = None) -> dict[str, int]:
    """Bytes of the merge's working set, for one column window (so independent of the
    slide's height, and of its width beyond one window)."""
    width = min(int(attrs["shape"][1]), window_columns(attrs, band_rows))
    h, w, channels, rows = _geometry(attrs, band_rows)
    per_px = 4 * channels + 2
    return {
        # band being summed + live rows of the previous band
        "canvases": 2 * h * width * per_px,
        # one output chunk band being filled (+ one in flight when writing in background)
        "chunk": rows * width * per_px,
        "read": READ_BATCH * h * w * channels * 4,
    }


def merge_threads(attrs: dict | None, band_rows: int | None = None) -> int:
    """2 when an output chunk is large enough to be worth a writer thread, else 1."""
    if attrs is None:
        return FALLBACK_THREADS
    return 2 if band_bytes(attrs, band_rows)["chunk"] >= BACKGROUND_WRITE_BYTES else 1


def merge_mem_mb(attrs: dict | None, band_rows: int | None = None) -> int:
    """mem_mb of the merge: its working set (see `band_bytes`) plus the interpreter."""
    if attrs is None:
        return FALLBACK_MEM_MB
    parts = band_bytes(attrs, band_rows)
    writers = merge_threads(attrs, band_rows)
    # chunk: buffers (1 or 2) + the codec's encoded copy per writer
    total = parts["canvases"] + parts["read"] + parts["chunk"] * (2 * writers)
    return math.ceil(BASE_MB + 1.25 * total / MB)


# Callables for the rule's `threads:` and `resources: mem_mb=` (Snakemake passes the
# job's input; rule files keep no function definitions).
def rule_threads(options: dict):
    """The rule's `threads:` callable for the `merge` config section `options`."""
    band_rows = options.get("band_rows")

    def merge_threads_of_job(wildcards, input):  # noqa: ARG001 - Snakemake passes by name
        return merge_threads(read_raw_attrs(input.raw), band_rows)

    return merge_threads_of_job


def rule_mem_mb(options: dict):
    """The rule's `resources: mem_mb=` callable for the `merge` config section `options`."""
    band_rows = options.get("band_rows")

    def merge_mem_mb_of_job(wildcards, input, attempt):  # noqa: ARG001 - Snakemake passes by name
        # More on a retry: a job killed for memory gets another 100% per attempt.
        return merge_mem_mb(read_raw_attrs(input.raw), band_rows) * attempt

    return merge_mem_mb_of_job

"""The one reader of Snakemake's benchmark files, `benchmarks/<rule>/<sample>.tsv`.

Each file is a TSV with one row per repeat of the job; `s` is its wall time in
seconds and `max_rss` its peak resident memory in MB ("NA" where psutil could not
measure). run.json, the export summary and the cohort table all read them here.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from histoflow.errors import HistoflowError
from histoflow.paths import benchmark_path

# Columns read: wall seconds and peak RSS (MB).
MEASURES = ("s", "max_rss")


class BenchmarkError(HistoflowError):
    """A benchmark file has no data row or no `s` column; the message names the file."""


def read_benchmark(path: str | os.PathLike) -> dict[str, float | None]:
    """Mean of `s` and `max_rss` over the file's rows (None where no row has a number)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        rows = list(reader)
        header = reader.fieldnames or []
    if not rows:
        raise BenchmarkError(f"file '{path}': benchmark file has no data row")
    if "s" not in header:
        raise BenchmarkError(f"file '{path}': benchmark file has no column 's'")
    return {key: _mean(row.get(key) for row in rows) for key in MEASURES}


def _mean(cells) -> float | None:
    values = []
    for cell in cells:
        try:
            values.append(float(cell))
        except (TypeError, ValueError):
            continue  # "NA" where psutil could not measure
    return sum(values) / len(values) if values else None


def rule_timings(benchmarks_dir: str | os.PathLike, sample: str) -> dict[str, dict]:
    """rule -> {"s", "max_rss"} for every `benchmarks/<rule>/<sample>.tsv` present.

    A file that cannot be read leaves its rule out; one without measures (no data
    row, no `s` column) records None for both.
    """
    root = Path(benchmarks_dir)
    timings = {}
    if root.is_dir():
        for path in sorted(root.glob(benchmark_path("*", sample, ".").as_posix())):
            try:
                timings[path.parent.name] = read_benchmark(path)
            except BenchmarkError:
                timings[path.parent.name] = dict.fromkeys(MEASURES)
            except OSError:
                continue
    return timings

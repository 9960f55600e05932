"""QC flags of the slides of a cohort, each explained in one sentence.

A flag is `{"id", "detail"}`: `id` one of FLAGS, `detail` the slide's numbers. The
comparisons with the cohort median use the slides that finished (status ok) and have
the value; with a median of 0 there is no ratio, so no outlier.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

from histoflow.report.settings import ReportSettings

# id -> (title, explanation); explanations name the config key that sets the factor.
FLAGS = {
    "no_tissue": (
        "no tissue",
        "The tissue mask is empty (tissue fraction 0): nothing was analysed. Check the "
        "slide, or the mask settings (config mask.*) for a faint stain.",
    ),
    "tissue_fraction": (
        "tissue fraction",
        "Tissue fraction more than {tissue_fraction_factor:g}x above or below the cohort "
        "median (config report.qc.tissue_fraction_factor): a poor mask, or an odd slide.",
    ),
    "density": (
        "density",
        "Objects per mm² of tissue more than {density_factor:g}x above or below the cohort "
        "median (config report.qc.density_factor): check the stain, the mask and the mpp.",
    ),
    "mpp_from_sheet": (
        "mpp from sheet",
        "The resolution (µm/px) comes from the sample sheet's mpp column, not from the "
        "slide file: every area and density depends on it, so check it.",
    ),
    "large_slide": (
        "large slide",
        "More level-0 pixels than {size_factor:g}x the cohort median "
        "(config report.qc.size_factor): its jobs take longer and need more memory.",
    ),
}


def explain(flag: str, settings: ReportSettings) -> str:
    """The sentence that explains `flag`, with the configured factor."""
    return FLAGS[flag][1].format(**vars(settings))


def _pixels(row: dict) -> float | None:
    w, h = row.get("slide_width"), row.get("slide_height")
    return float(w) * float(h) if w and h else None


def _density(row: dict) -> float | None:
    return row.get("objects_per_mm2")


def _fraction(row: dict) -> float | None:
    return row.get("tissue_fraction")


def cohort_median(rows: list[dict], value: Callable[[dict], float | None]) -> float | None:
    """Median of `value` over the finished slides that have it; None if none has."""
    values = [v for r in rows if r.get("status") == "ok" and (v := value(r)) is not None]
    return statistics.median(values) if values else None


def _far(value: float | None, median: float | None, factor: float) -> float | None:
    """value / median when it is more than `factor` from 1 either way, else None."""
    if value is None or not median:
        return None
    ratio = value / median
    return ratio if ratio > factor or ratio < 1 / factor else None


def _outlier(name: str, value, median, factor, unit: str = "") -> str | None:
    ratio = _far(value, median, factor)
    if ratio is None:
        return None
    return f"{name} {value:.4g}{unit} is {ratio:.3g}x the cohort median {median:.4g}{unit}"


def slide_flags(row: dict, medians: dict, settings: ReportSettings) -> list[dict]:
    """Flags of one slide row (values as `histoflow.cohort.slide_row` gives them, with
    `objects_per_mm2`), given the cohort `medians` of `cohort_medians`."""
    flags = []
    fraction = _fraction(row)
    if fraction is not None and fraction <= 0:
        flags.append({"id": "no_tissue", "detail": "tissue fraction 0"})
    checks = (
        ("tissue_fraction", "tissue fraction", fraction, settings.tissue_fraction_factor, ""),
        ("density", "density", _density(row), settings.density_factor, "/mm²"),
    )
    for flag, name, value, factor, unit in checks:
        if flag == "tissue_fraction" and flags:
            continue  # no tissue says it already
        detail = _outlier(name, value, medians.get(flag), factor, unit)
        if detail:
            flags.append({"id": flag, "detail": detail})
    if row.get("mpp_source") == "sheet":
        flags.append({"id": "mpp_from_sheet", "detail": f"mpp {row.get('slide_mpp')} from sheet"})
    pixels, median_pixels = _pixels(row), medians.get("large_slide")
    if pixels and median_pixels and pixels > settings.size_factor * median_pixels:
        ratio = pixels / median_pixels
        flags.append({"id": "large_slide", "detail": f"{ratio:.3g}x the median pixel count"})
    return flags


def cohort_medians(rows: list[dict]) -> dict[str, float | None]:
    """The medians the outlier flags compare with, by flag id."""
    return {
        "tissue_fraction": cohort_median(rows, _fraction),
        "density": cohort_median(rows, _density),
        "large_slide": cohort_median(rows, _pixels),
    }


def cohort_flags(rows: list[dict], settings: ReportSettings) -> list[list[dict]]:
    """Flags of every row, in row order."""
    medians = cohort_medians(rows)
    return [slide_flags(row, medians, settings) for row in rows]

"""The config section `report` (config.schema.yaml) as one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass, fields

from histoflow.errors import ConfigError


@dataclass(frozen=True)
class ReportSettings:
    """How the cohort report is drawn and when a slide is flagged.

    A value far from the cohort median is one more than `factor` times the median or
    less than the median divided by `factor`.
    """

    # Longest side (px) of each embedded picture.
    thumbnail_px: int = 200
    # Slides per page of the gallery and of the table.
    page_size: int = 50
    tissue_fraction_factor: float = 3.0
    density_factor: float = 3.0
    # Level-0 pixels of a slide over the cohort median.
    size_factor: float = 4.0

    @classmethod
    def from_config(cls, section: dict | None) -> ReportSettings:
        """Settings from config `report` ({thumbnail_px, page_size, qc: {...}})."""
        section = dict(section or {})
        flat = {**(section.pop("qc", None) or {}), **section}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ConfigError(f"config field 'report': unknown key(s) {', '.join(unknown)}")
        return cls(**flat)

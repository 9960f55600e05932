"""The config section `merge` as the stage's options; defaults come from the schema."""

from __future__ import annotations

from dataclasses import dataclass

from histoflow.config import schema_defaults
from histoflow.errors import ConfigError
from histoflow.io.maps_zarr import COMPRESSIONS, ENCODINGS

# Tuning knobs that are not configuration (tests and benchmarks vary them): patches
# read from raw.zarr per batch, columns per block of a spilled accumulator, and columns
# of a merge window (rounded down to whole maps.zarr chunks).
READ_BATCH = 64
SPILL_BLOCK_COLS = 2048


@dataclass(frozen=True)
class MergeOptions:
    """Options of merge_patches: the `merge` section plus the tuning knobs."""

    memory_percent: float
    memory_cap_mb: float | None
    band_rows: int | None
    compression: str
    encoding: str
    read_batch: int = READ_BATCH
    spill_block_cols: int = SPILL_BLOCK_COLS
    window_cols: int | None = None  # None: from resources.WINDOW_BYTES

    @classmethod
    def from_config(cls, options: dict | None = None, **tuning: int) -> MergeOptions:
        """The section's values over the schema's defaults; `tuning` sets the knobs."""
        defaults = schema_defaults("merge")
        unknown = sorted(set(options or {}) - set(defaults))
        if unknown:
            raise ConfigError(f"config field 'merge.{unknown[0]}': unknown key")
        opts = cls(**{**defaults, **(options or {})}, **tuning)
        opts.check()
        return opts

    def check(self) -> None:
        """Raise `ConfigError` naming the field of a value the schema would refuse."""
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"config field 'merge.compression': '{self.compression}' is not one of "
                f"{', '.join(COMPRESSIONS)}"
            )
        if self.encoding not in ENCODINGS:
            raise ConfigError(
                f"config field 'merge.encoding': '{self.encoding}' is not one of "
                f"{', '.join(ENCODINGS)}"
            )
        if not 0 <= self.memory_percent <= 100:
            raise ConfigError("config field 'merge.memory_percent': must be within 0-100")
        if self.band_rows is not None and self.band_rows < 1:
            raise ConfigError("config field 'merge.band_rows': must be at least 1")

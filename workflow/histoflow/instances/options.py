"""The config section `instances` as the stage's options; defaults come from the schema."""

from __future__ import annotations

from dataclasses import dataclass

from histoflow.config import schema_defaults
from histoflow.errors import ConfigError

EXECUTORS = ("process", "thread")


@dataclass(frozen=True)
class InstancesOptions:
    """Options of extract_instances. `tile_shape` None: the whole map as one tile."""

    tile_shape: tuple[int, int] | None
    margin: int
    workers: int
    executor: str
    overlay_size: int

    @classmethod
    def from_config(cls, options: dict | None = None) -> InstancesOptions:
        """The section's values over the schema's defaults."""
        values = {**schema_defaults("instances"), **(options or {})}
        shape = values["tile_shape"]
        values["tile_shape"] = None if shape is None else (int(shape[0]), int(shape[1]))
        values["margin"] = int(values["margin"])
        values["workers"] = max(1, int(values["workers"]))
        if values["executor"] not in EXECUTORS:
            raise ConfigError(f"config field 'instances.executor': one of {', '.join(EXECUTORS)}")
        return cls(**values)

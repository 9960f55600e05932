"""The config section `instances` as the stage's options; defaults come from the schema."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from histoflow.config import load_schema, schema_defaults
from histoflow.errors import ConfigError

EXECUTORS = ("process", "thread")
CARD = "card"  # tile_shape / margin: the model card's


def card_tiling(model: dict) -> tuple[tuple[int, int], int]:
    """The card's post-processing tile shape and margin, or the card schema's defaults."""
    props = load_schema("model_card.schema.yaml")["properties"]
    shape = model.get("tile_shape") or props["tile_shape"]["default"]
    margin = model.get("margin")
    margin = props["margin"]["default"] if margin is None else margin
    return (int(shape[0]), int(shape[1])), int(margin)


@dataclass(frozen=True)
class InstancesOptions:
    """Options of extract_instances. `tile_shape` None: the whole map as one tile;
    `tile_shape` or `margin` "card": the model card's (`for_card`)."""

    tile_shape: tuple[int, int] | str | None
    margin: int | str
    workers: int
    executor: str
    overlay_size: int

    @classmethod
    def from_config(cls, options: dict | None = None) -> InstancesOptions:
        """The section's values over the schema's defaults."""
        values = {**schema_defaults("instances"), **(options or {})}
        shape = values["tile_shape"]
        if shape is not None and shape != CARD:
            values["tile_shape"] = (int(shape[0]), int(shape[1]))
        if values["margin"] != CARD:
            values["margin"] = int(values["margin"])
        values["workers"] = max(1, int(values["workers"]))
        if values["executor"] not in EXECUTORS:
            raise ConfigError(f"config field 'instances.executor': one of {', '.join(EXECUTORS)}")
        return cls(**values)

    def for_card(self, model: dict) -> InstancesOptions:
        """These options with "card" values replaced by the model card's."""
        shape, margin = card_tiling(model)
        return dataclasses.replace(
            self,
            tile_shape=shape if self.tile_shape == CARD else self.tile_shape,
            margin=margin if self.margin == CARD else self.margin,
        )

"""Model cards: load, validate against histoflow/schemas/model_card.schema.yaml, resolve files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from histoflow.config import DefaultingValidator, load_schema
from histoflow.errors import ModelError
from histoflow.hashing import sha256_file

BUILTIN_CARDS = Path(__file__).resolve().parent / "cards"
MODEL_FILES = ("torchscript", "export", "weights")  # source keys naming files
SOURCES = ("builtin", "torchscript", "export", "entrypoint")  # exactly one per card


def builtin_names() -> list[str]:
    """The names of the built-in dense model cards."""
    return sorted(p.stem for p in BUILTIN_CARDS.glob("*.yaml"))


@dataclass(frozen=True)
class ModelCard:
    """A validated model card and the file it came from."""

    card: dict  # validated, defaults filled; goes into raw.zarr attrs
    path: Path  # the card file (relative sources resolve against its folder)
    weights: Path | None = None  # config field model.weights (overrides source.weights)

    @property
    def name(self) -> str:
        """The model's name."""
        return self.card["name"]

    @property
    def heads(self) -> list[dict]:
        """The output heads: name, channels, activation."""
        return self.card["heads"]

    @property
    def mpp(self) -> float:
        """The resolution (µm/px) the model expects."""
        return float(self.card["mpp"])

    @property
    def patch_input(self) -> tuple[int, int]:
        """(h, w) of the model's input patch."""
        return tuple(self.card["patch_input"])

    @property
    def patch_output(self) -> tuple[int, int]:
        """(h, w) of the model's output patch (centred in the input)."""
        return tuple(self.card["patch_output"])

    def file(self, key: str) -> Path | None:
        """The file of `source.<key>`, resolved against the card's folder (None: unset);
        for `weights`, config field model.weights wins over the card's."""
        if key == "weights" and self.weights is not None:
            return self.weights
        value = self.card["source"].get(key)
        return None if value is None else (self.path.parent / value).resolve()

    def files(self) -> list[Path]:
        """The card and the files it points to (inputs of the inference rule)."""
        return [self.path] + [p for k in MODEL_FILES if (p := self.file(k))]

    def weights_sha256(self) -> str | None:
        """sha256 of the TorchScript, ExportedProgram or weights file (None: weight-free)."""
        path = self.file("torchscript") or self.file("export") or self.file("weights")
        return sha256_file(path) if path else None


def resolve_card_path(spec: str) -> Path:
    """`builtin:<name>` or a path to a card YAML -> the card file."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        path = BUILTIN_CARDS / f"{name}.yaml"
        if not path.is_file():
            raise ModelError(
                f"config field 'model.card': unknown built-in model '{name}' "
                f"(built-in: {', '.join(builtin_names())})"
            )
        return path
    path = Path(spec)
    if not path.is_file():
        raise ModelError(
            f"config field 'model.card': model card '{spec}' not found "
            f"(give a card YAML path or builtin:<name>; built-in: {', '.join(builtin_names())})"
        )
    return path


def read_card(path: Path) -> dict:
    """Parse a card file and validate it against the schema, filling defaults."""
    try:
        card = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ModelError(f"model card '{path}' is not valid YAML: {exc}") from exc
    if not isinstance(card, dict):
        raise ModelError(f"model card '{path}' must be a mapping")
    errors = sorted(
        DefaultingValidator(load_schema("model_card.schema.yaml")).iter_errors(card),
        key=lambda e: list(e.path),
    )
    if errors:
        e = errors[0]
        field = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ModelError(f"model card '{path}': field '{field}': {e.message}")
    return card


def load_card(spec: str, weights: str | Path | None = None) -> ModelCard:
    """A card by built-in name or path, validated and checked for consistency.

    `weights` (config field model.weights) is the state dict for the card's built-in
    architecture or entry point, replacing the card's `source.weights`.
    """
    path = resolve_card_path(spec)
    card = read_card(path)
    _check_consistency(card, path)
    for key in MODEL_FILES:
        value = card["source"].get(key)
        if value and not (path.parent / value).is_file():
            raise ModelError(f"model card '{path}': field 'source.{key}': file '{value}' not found")
    if weights is None:
        return ModelCard(card=card, path=path.resolve())
    if not Path(weights).is_file():
        raise ModelError(f"config field 'model.weights': weights file '{weights}' not found")
    if not ("builtin" in card["source"] or "entrypoint" in card["source"]):
        raise ModelError(
            f"config field 'model.weights': card '{path}' loads a whole saved model "
            "(source.torchscript or source.export), which takes no separate weights"
        )
    return ModelCard(card=card, path=path.resolve(), weights=Path(weights).resolve())


def _check_consistency(card: dict, path: Path) -> None:
    _check_source(card, path)
    if card["kind"] != "dense":
        return  # tile cards: checked by histoflow.tiles.model against output.dim
    heads = {h["name"]: h for h in card["heads"]}
    if len(heads) != len(card["heads"]):
        raise ModelError(f"model card '{path}': field 'heads': head names must be unique")
    (ih, iw), (oh, ow) = card["patch_input"], card["patch_output"]
    if oh > ih or ow > iw or (ih - oh) % 2 or (iw - ow) % 2:
        raise ModelError(
            f"model card '{path}': field 'patch_output': {card['patch_output']} must fit centred "
            f"in patch_input {card['patch_input']} (equal margins on both sides)"
        )
    for i, task in enumerate(card["postprocess"]):
        for role, head in task["heads"].items():
            if head not in heads:
                raise ModelError(
                    f"model card '{path}': field 'postprocess.{i}.heads.{role}': "
                    f"no head named '{head}' (heads: {', '.join(heads)})"
                )


def _check_source(card: dict, path: Path) -> None:
    sources = [k for k in SOURCES if k in card["source"]]
    if len(sources) != 1:
        raise ModelError(
            f"model card '{path}': field 'source': give exactly one of {', '.join(SOURCES)} "
            f"(got {', '.join(sources) or 'none'})"
        )


def load_dense_card(spec: str, weights: str | Path | None = None) -> ModelCard:
    """A card for dense (map) inference; a tile-level card is pointed at the tiles stage."""
    card = load_card(spec, weights)
    if card.card["kind"] != "dense":
        raise ModelError(
            f"config field 'model.card': '{spec}' is a model of kind '{card.card['kind']}'; "
            "tile-level models run in the 'tiles' stage (config field 'tiles.model')"
        )
    return card

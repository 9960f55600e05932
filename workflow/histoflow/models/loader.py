"""Build the nn.Module a card describes and check it against the card on one dummy batch.

Sources: `builtin` (histoflow.models.hed, no weights; or a HoVer-Net architecture,
`hovernet_fast`, `hovernet_original`, `hovernetplus`, whose checkpoint is required and
loaded with histoflow.models.hovernet.load_checkpoint), `torchscript` (torch.jit.load:
no pickle), `export` (a torch.export ExportedProgram, `.pt2`), `entrypoint`
(`module:function` returning an nn.Module; optional weights). Weights are read with
torch.load(weights_only=True), so a file that needs arbitrary unpickling is refused.
Nothing is downloaded.
"""

from __future__ import annotations

import importlib
import pickle
import sys
import traceback

import torch
from torch import nn

from histoflow.errors import ModelError
from histoflow.models.card import ModelCard
from histoflow.models.hed import BUILTINS
from histoflow.models.hovernet import HoVerNet, HoVerNetPlus, load_checkpoint

# Built-in architectures that need a checkpoint: name -> constructor(**source.kwargs)
ARCHITECTURES = {
    "hovernet_fast": lambda **kw: HoVerNet("fast", **kw),
    "hovernet_original": lambda **kw: HoVerNet("original", **kw),
    "hovernetplus": lambda **kw: HoVerNetPlus(**kw),
}


def build_model(card: ModelCard) -> nn.Module:
    """The card's nn.Module in eval mode: built-in, TorchScript, ExportedProgram or entry
    point."""
    source = card.card["source"]
    if "builtin" in source:
        model = _builtin(card, source["builtin"])
    elif "torchscript" in source:
        path = card.file("torchscript")
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelError(f"TorchScript file '{path}' cannot be loaded: {exc}") from exc
    elif "export" in source:
        model = load_exported(card)
    else:
        model = _from_entrypoint(card)
    return model.eval()


def _builtin(card: ModelCard, name: str) -> nn.Module:
    if name in BUILTINS:
        if card.file("weights") is not None:
            raise ModelError(
                f"model card '{card.name}' ({card.path}) is the weight-free built-in '{name}': "
                "it takes no weights (config field 'model.weights', card field source.weights)"
            )
        return BUILTINS[name]()
    if name not in ARCHITECTURES:
        known = ", ".join(sorted([*BUILTINS, *ARCHITECTURES]))
        raise ModelError(
            f"model card '{card.path}': field 'source.builtin': unknown built-in model "
            f"'{name}' (built-in: {known})"
        )
    kwargs = card.card["source"].get("kwargs", {})
    try:
        model = ARCHITECTURES[name](**kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelError(
            f"model card '{card.path}': field 'source.kwargs': {kwargs} do not build "
            f"'{name}': {exc}"
        ) from exc
    weights = card.file("weights")
    if weights is None:
        raise ModelError(
            f"model card '{card.name}' ({card.path}) is the '{name}' architecture and needs "
            "its trained weights: give the checkpoint file with config field 'model.weights' "
            f"(python -m histoflow.models fetch {card.name} downloads the published one)"
        )
    try:
        return load_checkpoint(weights, model)
    except ModelError as exc:
        raise ModelError(f"model card '{card.name}', config field 'model.weights': {exc}") from exc


class ExportedModule(nn.Module):
    """A torch.export program's module; `train`/`eval` only set the flag, as an exported
    graph is fixed in the mode it was exported in (export the model in eval mode)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.program = module

    def train(self, mode: bool = True) -> ExportedModule:
        """Record `mode` without touching the exported graph."""
        self.training = mode
        return self

    def forward(self, x):
        """The exported program's output for `x`."""
        return self.program(x)


def load_exported(card: ModelCard) -> nn.Module:
    """The module of the card's torch.export ExportedProgram (`source.export`, `.pt2`)."""
    path = card.file("export")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many kinds (zip, pickle, version, schema)
        raise ModelError(
            f"model card '{card.path}': field 'source.export': '{path}' is not a loadable "
            f"torch.export program (torch.export.save output): {type(exc).__name__}: {exc}"
        ) from exc
    return ExportedModule(program.module())


def _from_entrypoint(card: ModelCard) -> nn.Module:
    spec = card.card["source"]["entrypoint"]
    func = _import_entrypoint(card, spec)
    kwargs = card.card["source"].get("kwargs", {})
    try:
        model = func(**kwargs)
    except Exception as exc:  # any failure of user code that builds the model
        raise ModelError(
            f"model card '{card.path}': field 'source.entrypoint': '{spec}' failed "
            f"with kwargs {kwargs}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"entry point '{spec}' returned {type(model).__name__}, not nn.Module")
    weights = card.file("weights")
    if weights:
        _load_weights(model, weights, spec)
    return model


def _import_entrypoint(card: ModelCard, spec: str):
    module_name, func_name = spec.split(":")
    # A model.py shipped next to its card imports without installing it; installed
    # packages of the same name still win, as the folder goes last on the path.
    folder = str(card.path.parent)
    added = folder not in sys.path
    if added:
        sys.path.append(folder)
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # a user module may raise anything on import
        raise ModelError(
            f"model card '{card.path}': field 'source.entrypoint': cannot import module "
            f"'{module_name}' of '{spec}': {type(exc).__name__}: {exc}{_where(exc)}"
        ) from None
    finally:
        if added:
            sys.path.remove(folder)
    try:
        return getattr(module, func_name)
    except AttributeError:
        raise ModelError(
            f"model card '{card.path}': field 'source.entrypoint': cannot import "
            f"'{spec}': module '{module_name}' has no '{func_name}'"
        ) from None


def _where(exc: BaseException) -> str:
    """` (at FILE:LINE)` of the innermost frame that raised `exc`, or ''."""
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _load_weights(model: nn.Module, weights, spec: str) -> None:
    """Load a plain state dict of tensors (never arbitrary pickles) into `model`."""
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"weights file '{weights}' needs arbitrary unpickling, which histoflow refuses "
            "(save a plain state_dict of tensors with torch.save(model.state_dict(), ...))"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelError(f"weights file '{weights}' is not a readable torch file: {exc}") from exc
    if not isinstance(state, dict):
        raise ModelError(f"weights file '{weights}' holds {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"weights file '{weights}' does not fit '{spec}': {exc}") from exc


def outputs_by_head(card: ModelCard, out) -> dict[str, torch.Tensor]:
    """A model's output (dict, tuple/list in card head order, or one tensor) by head name."""
    names = [h["name"] for h in card.heads]
    if isinstance(out, dict):
        missing = [n for n in names if n not in out]
        if missing:
            raise ModelError(
                f"model '{card.name}' returned heads {sorted(out)}, card '{card.path}' "
                f"field 'heads' expects {names}"
            )
        return {n: out[n] for n in names}
    if isinstance(out, torch.Tensor):
        out = [out]
    if len(out) != len(names):
        raise ModelError(
            f"model '{card.name}' returned {len(out)} outputs, card '{card.path}' field 'heads' "
            f"lists {len(names)}"
        )
    return dict(zip(names, out))


def dummy_forward(card: ModelCard, model: nn.Module, batch: int):
    """The model's output for `batch` mid-grey patches of the card's input shape.

    Any failure of the model on that valid batch becomes a ModelError naming the card.
    """
    h, w = card.patch_input
    with torch.inference_mode():
        try:
            return model(torch.full((batch, 3, h, w), 0.5))
        except Exception as exc:  # any failure of a user model on a valid batch
            raise ModelError(
                f"model '{card.name}' failed on a dummy batch of shape ({batch}, 3, {h}, {w}) "
                f"from card '{card.path}' field 'patch_input': {exc}"
            ) from exc


def check_against_card(card: ModelCard, model: nn.Module) -> None:
    """Run one dummy batch and compare each head's shape with the card."""
    out = dummy_forward(card, model, 1)
    oh, ow = card.patch_output
    for i, (name, tensor) in enumerate(outputs_by_head(card, out).items()):
        want = (1, card.heads[i]["channels"], oh, ow)
        if tuple(tensor.shape) != want:
            raise ModelError(
                f"model '{card.name}' head '{name}' gives shape {tuple(tensor.shape)}, but card "
                f"'{card.path}' says {want} (fields 'heads.{i}.channels' and 'patch_output')"
            )


def load_model(card: ModelCard) -> nn.Module:
    """The card's model, checked against the card's heads and patch shapes."""
    model = build_model(card)
    check_against_card(card, model)
    return model

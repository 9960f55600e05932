"""HoVer-Net and HoVer-Net+ in plain torch, and loading of their published checkpoints.

`HoVerNet(mode, num_types)` / `HoVerNetPlus(num_types, num_layers)` take 0..255 RGB and
return head name -> logits; `load_checkpoint(path_or_dict, model)` loads a TIAToolbox
state dict or an original-repository `{"desc": ...}` file strictly; `published_model`
builds the architecture of one of TIAToolbox's five pretrained nucleus models.
"""

from histoflow.models.hovernet.checkpoint import (
    PUBLISHED,
    formula_state_dict,
    load_checkpoint,
    published_model,
    to_local,
    to_published,
)
from histoflow.models.hovernet.net import MODES, HoVerNet, HoVerNetPlus

__all__ = [
    "MODES",
    "PUBLISHED",
    "HoVerNet",
    "HoVerNetPlus",
    "formula_state_dict",
    "load_checkpoint",
    "published_model",
    "to_local",
    "to_published",
]

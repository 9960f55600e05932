"""Mapping a slide's stains onto a target's: one 3 x 3 matrix in optical density.

A pixel's OD is decomposed into the slide's two stain concentrations, each rescaled
by target max / slide max, and recomposed with the target's vectors:
OD' = OD · pinv(V_slide) · diag(ratio) · V_target. The OD left outside the slide's
stain plane is dropped (as Macenko's reconstruction does). Applied per batch on the
model's device, before the card's input normalisation.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from histoflow.errors import ConfigError, SlideError
from histoflow.hashing import sha256_file
from histoflow.stain_norm.macenko import StainFit, fit_macenko


def transfer_matrix(source: StainFit, target: StainFit) -> np.ndarray:
    """(3, 3): row-vector OD of the source times it gives the target's OD."""
    ratio = target.max_concentration / source.max_concentration
    return np.linalg.pinv(source.vectors) @ np.diag(ratio) @ target.vectors


def transfer_numpy(rgb: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB of `rgb` restained by `matrix` (a reference implementation)."""
    od = -np.log((rgb.astype(np.float64) + 1.0) / 256.0) @ matrix
    return np.clip(np.rint(256.0 * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)


class StainTransfer:
    """The restaining of (B, 3, h, w) float batches in 0..255, in place, on `device`."""

    def __init__(self, matrix: np.ndarray, device: torch.device):
        self.matrix = torch.as_tensor(matrix, dtype=torch.float32, device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """`x` restained (same tensor, same memory layout)."""
        od = x.add_(1.0).div_(256.0).log_().neg_()
        mixed = torch.einsum("bchw,cd->bdhw", od, self.matrix)
        return x.copy_(mixed).neg_().exp_().mul_(256.0).sub_(1.0).clamp_(0.0, 255.0)


def fit_target(path: str) -> StainFit:
    """Stain vectors of a target image file (its stained pixels; glass is left out)."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return fit_macenko(rgb)


def plan_transfer(
    spec: dict | None,
    thumbnail: np.ndarray | None,
    mask: np.ndarray | None,
    sample: str | None,
    slide_path: str,
) -> tuple[np.ndarray, dict] | None:
    """The slide's restaining matrix and its record for `spec` (config
    `inference.stain_normalisation`), fitted on the tissue thumbnail; None when off."""
    if not spec:
        return None
    target = spec["target"]
    field = "inference.stain_normalisation.target"
    try:
        target_fit = fit_target(target)
    except FileNotFoundError as exc:
        raise ConfigError(f"config field '{field}': file '{target}' not found") from exc
    except (OSError, ValueError) as exc:  # not an image, or no stain in it
        raise ConfigError(
            f"config field '{field}': '{target}' has no usable stain ({exc})"
        ) from exc
    if thumbnail is None:
        raise ValueError("stain normalisation needs the mask stage's thumbnail")
    try:
        slide_fit = fit_macenko(thumbnail, mask)
    except ValueError as exc:
        raise SlideError(
            f"stain normalisation: no stains to fit on the tissue thumbnail ({exc})",
            sample,
            slide_path,
        ) from exc
    record = {
        "method": spec.get("method", "macenko"),
        "target_sha256": sha256_file(target),
        "target": target_fit.as_attrs(),
        "slide": slide_fit.as_attrs(),
    }
    return transfer_matrix(slide_fit, target_fit), record

"""Built-in tile models that need no weights: stain and texture statistics as torch ops.

These are not trained networks. `StainStats` describes each tile by 12 numbers that a
pathologist would recognise (how much hematoxylin and eosin, how textured, how much
glass); it is a baseline feature set for MIL experiments and lets the whole tile
pipeline run without downloading anything. `StainClasses` turns the same statistics
into three heuristic class scores (background, eosin-rich, hematoxylin-rich) so a tile
classifier and its heatmap can be tested end to end; it is not a diagnostic model.

Input: (B, 3, H, W) RGB float in 0..1 (card `input.scale: 255`). Both modules are
TorchScript-compatible (`torch.jit.script`), so they also serve as TorchScript test
models.
"""

from __future__ import annotations

import torch
from torch import nn

from histoflow import stains

FEATURE_NAMES = (
    "hematoxylin_od_mean",
    "hematoxylin_od_std",
    "eosin_od_mean",
    "eosin_od_std",
    "optical_density_mean",
    "optical_density_std",
    "gradient_energy",
    "laplacian_variance",
    "hematoxylin_fraction",
    "background_fraction",
    "saturation_mean",
    "luminance_mean",
)
CLASS_NAMES = ("background", "eosin_rich", "hematoxylin_rich")

# Ruifrok & Johnston (2001) H&E(-DAB) stain vectors, rows = stains, as in
# skimage.color.rgb2hed; optical densities are unmixed with the inverse.
RGB_FROM_HED = torch.tensor(stains.RGB_FROM_HED, dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED).to(torch.float32)
LUMA = (0.299, 0.587, 0.114)
# Thresholds in optical-density units (natural log), chosen on H&E: glass has a total
# OD below ~0.25 (RGB above ~0.92), nuclei an H concentration above ~0.25.
BACKGROUND_OD = 0.25
NUCLEAR_H = 0.25


class StainStats(nn.Module):
    """(B, 3, H, W) in 0..1 -> (B, 12) stain and texture statistics (see FEATURE_NAMES)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("hed_from_rgb", HED_FROM_RGB.clone())
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1))
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
        self.register_buffer("sobel", torch.stack([sobel, sobel.t()]).unsqueeze(1))
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("laplace", lap.view(1, 1, 3, 3))
        self.nuclear_h = NUCLEAR_H
        self.background_od = BACKGROUND_OD

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One row of values per tile of the (B, 3, H, W) batch."""
        x = x.clamp(0.0, 1.0)
        b = x.shape[0]
        # Optical density per channel; +1/256 keeps black pixels finite.
        od = -torch.log((x * 255.0 + 1.0) / 256.0)
        conc = torch.einsum("bchw,cs->bshw", od, self.hed_from_rgb).clamp_min(0.0)
        h = conc[:, 0].reshape(b, -1)
        e = conc[:, 1].reshape(b, -1)
        total = od.mean(1).reshape(b, -1)
        gray = (x * self.luma).sum(1, keepdim=True)
        grad = nn.functional.conv2d(gray, self.sobel)
        energy = (grad * grad).sum(1).reshape(b, -1).mean(1)
        lap = nn.functional.conv2d(gray, self.laplace).reshape(b, -1).var(1, unbiased=False)
        cmax = x.amax(1)
        cmin = x.amin(1)
        sat = ((cmax - cmin) / cmax.clamp_min(1e-6)).reshape(b, -1)
        feats = [
            h.mean(1),
            h.std(1, unbiased=False),
            e.mean(1),
            e.std(1, unbiased=False),
            total.mean(1),
            total.std(1, unbiased=False),
            energy,
            lap,
            (h > self.nuclear_h).float().mean(1),
            (total < self.background_od).float().mean(1),
            sat.mean(1),
            gray.reshape(b, -1).mean(1),
        ]
        return torch.stack(feats, 1)


class StainClasses(nn.Module):
    """(B, 3, H, W) in 0..1 -> (B, 3) softmax scores: background, eosin-rich, hematoxylin-rich.

    Fixed logits from StainStats: the background fraction decides glass vs tissue, the
    balance of hematoxylin and eosin optical density decides between the two tissue
    classes. A heuristic for tests and rough maps, not a trained classifier.
    """

    def __init__(self, sharpness: float = 8.0, neutral_balance: float = 0.3):
        super().__init__()
        self.stats = StainStats()
        self.sharpness = sharpness
        # Ruifrok vectors give H more optical density than E even in stroma; on H&E
        # tissue (H - E) / (H + E) spans about -0.3..0.65 with its middle near 0.3.
        self.neutral_balance = neutral_balance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One row of values per tile of the (B, 3, H, W) batch."""
        f = self.stats(x)
        tissue = 1.0 - f[:, 9]
        balance = (f[:, 0] - f[:, 2]) / (f[:, 0] + f[:, 2]).clamp_min(1e-6)
        balance = balance - self.neutral_balance
        logits = torch.stack(
            [
                (0.5 - tissue) * 2.0,
                tissue - 0.5 - balance,
                tissue - 0.5 + balance,
            ],
            1,
        )
        return torch.softmax(logits * self.sharpness, 1)


BUILTIN_TILE_MODELS = {"stain_stats": StainStats, "stain_classes": StainClasses}


def build(name: str) -> nn.Module:
    """A built-in tile model by its card `source.builtin` name, in eval mode."""
    try:
        return BUILTIN_TILE_MODELS[name]().eval()
    except KeyError:
        known = ", ".join(sorted(BUILTIN_TILE_MODELS))
        raise KeyError(f"unknown built-in tile model '{name}' (known: {known})") from None

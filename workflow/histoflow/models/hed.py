"""The built-in dense model: colour deconvolution written as torch operations.

Not a trained network. It separates haematoxylin (nuclear stain) from eosin with the
fixed Ruifrok & Johnston stain matrix (the one scikit-image's rgb2hed uses), smooths
the haematoxylin density and maps it through a logistic curve to a nucleus
probability. A second, more strongly smoothed haematoxylin map (`energy`) peaks at
nucleus centres, which gives the watershed markers that split touching nuclei.
It needs no weights file and runs on any device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from histoflow import stains

# Ruifrok & Johnston (2001) stain vectors, rows = H, E, DAB optical densities (RGB).
RGB_FROM_HED = torch.tensor(stains.RGB_FROM_HED, dtype=torch.float64)
# skimage's rgb2hed divides log intensities by log(1e-6); keep its scale so thresholds
# are comparable with rgb2hed output.
LOG_ADJUST = -math.log(1e-6)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of `sigma` px, three sigmas each side."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float()


class HedNuclei(nn.Module):
    """(B, 3, H, W) RGB in 0-1 -> {nucleus: (B,1,h,w) logits, energy: (B,1,h,w)}.

    `crop` pixels are removed on each side: the smoothing needs context, so the output
    patch is the centre of the input (valid-convolution style, like HoVer-Net).
    """

    def __init__(
        self,
        sigma_prob: float = 1.0,
        sigma_energy: float = 3.0,
        threshold: float = 0.08,
        softness: float = 0.01,
        crop: int = 16,
    ):
        super().__init__()
        rgb_from_hed = RGB_FROM_HED / RGB_FROM_HED.norm(dim=1, keepdim=True)
        hed_from_rgb = torch.linalg.inv(rgb_from_hed)
        self.register_buffer("h_vector", hed_from_rgb[:, 0].float().view(1, 3, 1, 1))
        self.register_buffer("k_prob", gaussian_kernel(sigma_prob))
        self.register_buffer("k_energy", gaussian_kernel(sigma_energy))
        self.threshold = threshold
        self.softness = softness
        self.crop = crop

    @staticmethod
    def _smooth(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        r = k.numel() // 2
        x = F.pad(x, (r, r, r, r), mode="replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1))
        return F.conv2d(x, k.view(1, 1, -1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Nucleus logits and the energy map of the centre of each patch."""
        od = -torch.log(x.clamp_min(1e-6)) / LOG_ADJUST
        hema = (od * self.h_vector).sum(dim=1, keepdim=True)
        prob_logit = (self._smooth(hema, self.k_prob) - self.threshold) / self.softness
        energy = self._smooth(hema, self.k_energy) / self.softness
        c = self.crop
        if c:
            prob_logit = prob_logit[..., c:-c, c:-c]
            energy = energy[..., c:-c, c:-c]
        return {"nucleus": prob_logit, "energy": energy}


BUILTINS = {"hed_nuclei": HedNuclei}

"""The built-in dense model: colour deconvolution written as torch operations.

Not a trained network. It separates haematoxylin (nuclear stain) from eosin with the
fixed Ruifrok & Johnston stain matrix (the one scikit-image's rgb2hed uses), smooths
the haematoxylin density and maps it through a logistic curve to a nucleus
probability. A second, more strongly smoothed haematoxylin map (`energy`) peaks at
nucleus centres, which gives the watershed markers that split touching nuclei.
It needs no weights file and runs on any device.

`HedHoverNet` gives HoVer-Net fast's three heads (np, hv, tp) from the same colour
deconvolution, for benchmarks of the stages around the network at HoVer-Net's output
sizes (an entry point: `histoflow.models.hed:HedHoverNet`; benchmarks/bench_fullsize.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from histoflow import stains

# Ruifrok & Johnston (2001) stain vectors, rows = H, E, DAB optical densities (RGB).
RGB_FROM_HED = torch.tensor(stains.RGB_FROM_HED, dtype=torch.float64)
# Optical densities (RGB) -> stain amounts, from the unit-normalised stain vectors.
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED / RGB_FROM_HED.norm(dim=1, keepdim=True))
# skimage's rgb2hed divides log intensities by log(1e-6); keep its scale so thresholds
# are comparable with rgb2hed output.
LOG_ADJUST = -math.log(1e-6)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of `sigma` px, three sigmas each side."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float()


def smooth(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each channel of (B, C, H, W) convolved with the separable kernel `k` (edges
    replicated), same size out."""
    r, c = k.numel() // 2, x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


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
        self.register_buffer("h_vector", HED_FROM_RGB[:, 0].float().view(1, 3, 1, 1))
        self.register_buffer("k_prob", gaussian_kernel(sigma_prob))
        self.register_buffer("k_energy", gaussian_kernel(sigma_energy))
        self.threshold = threshold
        self.softness = softness
        self.crop = crop

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Nucleus logits and the energy map of the centre of each patch."""
        od = -torch.log(x.clamp_min(1e-6)) / LOG_ADJUST
        hema = (od * self.h_vector).sum(dim=1, keepdim=True)
        prob_logit = (smooth(hema, self.k_prob) - self.threshold) / self.softness
        energy = smooth(hema, self.k_energy) / self.softness
        c = self.crop
        if c:
            prob_logit = prob_logit[..., c:-c, c:-c]
            energy = energy[..., c:-c, c:-c]
        return {"nucleus": prob_logit, "energy": energy}


class HedHoverNet(nn.Module):
    """HoVer-Net's heads from colour deconvolution: (B, 3, H, W) RGB in 0-1 ->
    {np: (B, 2, h, w) logits, hv: (B, 2, h, w) in [-1, 1], tp: (B, types, h, w) logits}.

    Not trained: a stand-in with HoVer-Net fast's inputs and outputs (256 -> 164 px at
    0.25 um/px) and maps the published post-processing can split, at a small fraction of
    its cost, for benchmarks of the stages around the network. np is a logistic curve
    of the smoothed haematoxylin density (as HedNuclei); hv is minus the gradient of the
    log of a more strongly smoothed density, which points away from each nucleus'
    centre and flips sign across the saddle between touching nuclei, as HoVer-Net's hv
    does; tp scores each type by the distance of the smoothed (haematoxylin, eosin)
    densities to a fixed prototype, type 0 (background) by -np.
    """

    def __init__(
        self,
        num_types: int = 6,
        sigma_prob: float = 2.0,
        sigma_centre: float = 6.0,
        radius_px: float = 6.0,
        threshold: float = 0.08,
        softness: float = 0.01,
        crop: int = 46,
    ):
        super().__init__()
        self.register_buffer("he_vectors", HED_FROM_RGB[:, :2].T.float().view(2, 3, 1, 1))
        self.register_buffer("k_prob", gaussian_kernel(sigma_prob))
        self.register_buffer("k_centre", gaussian_kernel(sigma_centre))
        # Prototype (haematoxylin, eosin) densities of types 1.., spread over the range
        # H&E nuclei span, so that every type occurs on a real slide.
        h = torch.linspace(threshold, 4 * threshold, max(num_types - 1, 1))
        e = torch.linspace(2 * threshold, 0.0, max(num_types - 1, 1))
        self.register_buffer("prototypes", torch.stack([h, e], dim=1).view(-1, 2, 1, 1))
        # For a bump of width sigma, -d(log S)/dx is about (x - cx) / sigma^2: this
        # gain makes hv about +-1 at `radius_px` from the centre.
        self.hv_gain = sigma_centre**2 / radius_px
        self.threshold, self.softness, self.crop = threshold, softness, crop
        self.num_types = num_types

    def _hv(self, hema: torch.Tensor) -> torch.Tensor:
        log_s = torch.log(smooth(hema, self.k_centre).clamp_min(self.threshold / 2))
        padded = F.pad(log_s, (1, 1, 1, 1), mode="replicate")
        dx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
        dy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
        return torch.tanh(-self.hv_gain * torch.cat([dx, dy], dim=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The three heads of the centre of each patch."""
        od = -torch.log(x.clamp_min(1e-6)) / LOG_ADJUST
        he = F.conv2d(od, self.he_vectors)
        dens = smooth(he, self.k_prob)
        fg = (dens[:, :1] - self.threshold) / self.softness
        np_logits = torch.cat([-fg / 2, fg / 2], dim=1)
        hv = self._hv(he[:, :1])
        dist = ((dens.unsqueeze(1) - self.prototypes) ** 2).sum(dim=2)
        tp = torch.cat([-fg, fg - dist / (self.threshold * self.softness)], dim=1)
        c = self.crop
        out = {"np": np_logits, "hv": hv, "tp": tp[:, : self.num_types]}
        return {k: v[..., c:-c, c:-c] if c else v for k, v in out.items()}


BUILTINS = {"hed_nuclei": HedNuclei}

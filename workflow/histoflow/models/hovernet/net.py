"""HoVer-Net (Graham et al. 2019) and HoVer-Net+ (Shephard et al. 2021) in plain torch.

Both take (B, 3, H, W) float RGB in 0..255 and divide by 255 themselves, as TIAToolbox's
and the original repository's models do (a card for them therefore uses `input.scale: 1`).
`forward` returns a dict head name -> logits (B, C, h, w) before any activation:

| head | channels | activation applied downstream |
|---|---|---|
| `np` | 2 (background, nucleus) | softmax |
| `hv` | 2 (horizontal, vertical distance to the nucleus centre) | none |
| `tp` | number of nucleus types, 0 = background (optional) | softmax |
| `ls` | number of tissue layers (HoVer-Net+ only) | softmax |

Modes: `fast` takes 256 x 256 and returns 164 x 164 (3x3 decoder kernels, 'same'
padded first convolution); `original` takes 270 x 270 and returns 80 x 80 (5x5 decoder
kernels, valid first convolution). HoVer-Net+ is the fast mode with four branches.
"""

from __future__ import annotations

import torch
from torch import nn

from histoflow.models.hovernet.layers import (
    BN_EPS,
    DecoderBranch,
    ResidualBlock,
    Upsample2x,
    bn_relu,
    crop_center,
    tf_same_pad,
)

# mode -> (input size, output size, decoder kernel size)
MODES = {"fast": (256, 164, 3), "original": (270, 80, 5)}
# skip-connection crops: how much smaller the decoder is than d0 and d1, per mode
_SKIP_CROP = {"fast": (92, 36), "original": (184, 72)}


class HoVerNet(nn.Module):
    """HoVer-Net: pre-activation ResNet-50 encoder, one dense decoder per branch.

    Args:
        mode: `fast` (256 -> 164 px) or `original` (270 -> 80 px).
        num_types: channels of the `tp` branch (types including background), or None
            for a model with np and hv only.
        num_layers: channels of an `ls` (tissue layer) branch, or None (HoVer-Net+ sets it).
    """

    def __init__(
        self, mode: str = "fast", num_types: int | None = None, num_layers: int | None = None
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"HoVer-Net mode must be one of {sorted(MODES)}, not {mode!r}")
        self.mode = mode
        self.patch_input, self.patch_output, ksize = MODES[mode]
        self.conv0 = _Stem()
        self.d0 = ResidualBlock(64, 64, 256, 3, stride=1)
        self.d1 = ResidualBlock(256, 128, 512, 4, stride=2)
        self.d2 = ResidualBlock(512, 256, 1024, 6, stride=2)
        self.d3 = ResidualBlock(1024, 512, 2048, 3, stride=2)
        self.conv_bot = nn.Conv2d(2048, 1024, 1, bias=False)
        channels = {"tp": num_types, "np": 2, "hv": 2, "ls": num_layers}
        self.decoder = nn.ModuleDict(
            {name: DecoderBranch(ch, ksize) for name, ch in channels.items() if ch is not None}
        )
        self.upsample2x = Upsample2x()

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features [d0, d1, d2, d3] of a 0..255 input, d0 and d1 already
        centre-cropped to the decoder's sizes."""
        x = x / 255.0
        if self.mode == "fast":
            x = tf_same_pad(x, 7, 1)
        d0 = self.d0(self.conv0(x))
        d1 = self.d1(d0)
        d2 = self.d2(d1)
        d3 = self.conv_bot(self.d3(d2))
        c0, c1 = _SKIP_CROP[self.mode]
        d0 = crop_center(d0, d0.shape[2] - c0, d0.shape[3] - c0)
        d1 = crop_center(d1, d1.shape[2] - c1, d1.shape[3] - c1)
        return [d0, d1, d2, d3]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head name -> logits (B, C, h, w) for a (B, 3, H, W) 0..255 float input."""
        feats = self.encode(x)
        return {name: branch(feats, self.upsample2x) for name, branch in self.decoder.items()}


class HoVerNetPlus(HoVerNet):
    """HoVer-Net+ (fast mode): np, hv, tp (nucleus types) and ls (tissue layers)."""

    def __init__(self, num_types: int = 3, num_layers: int = 5):
        super().__init__(mode="fast", num_types=num_types, num_layers=num_layers)


class _Stem(nn.Module):
    """conv0: 7x7 conv (64), BN-ReLU; padding, if any, is applied by the caller."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 7, bias=False)
        self.bn = nn.BatchNorm2d(64, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 64, H - 6, W - 6)."""
        return bn_relu(self.bn, self.conv(x))

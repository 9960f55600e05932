"""Building blocks of HoVer-Net (Graham et al., Med. Image Anal. 2019).

The encoder is a pre-activation ResNet-50 whose 3x3 convolutions pad as TensorFlow's
'same' does (the published weights were trained in TensorFlow, and TIAToolbox keeps that
padding); the decoder uses valid convolutions and densely connected units, so every
decoder stage shrinks its input and the skip connections are centre-cropped to match.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5


def tf_same_pad(x: torch.Tensor, ksize: int, stride: int) -> torch.Tensor:
    """Zero-pad `x` (N, C, H, W) as TensorFlow's 'same' padding does for a square kernel:
    the total padding depends on the height modulo the stride, and when it is odd the
    extra pixel goes to the bottom/right."""
    rest = x.shape[2] % stride
    total = max(ksize - (stride if rest == 0 else rest), 0)
    start = total // 2
    end = total - start
    return F.pad(x, (start, end, start, end))


def crop_center(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The central (height, width) window of `x` (N, C, H, W); an odd surplus is cut one
    pixel more at the bottom/right."""
    top = (x.shape[2] - height) // 2
    left = (x.shape[3] - width) // 2
    return x[:, :, top : top + height, left : left + width]


def bn_relu(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """Batch normalisation then ReLU."""
    return F.relu(bn(x))


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x upsampling as a Kronecker product with a 2x2 matrix.

    The matrix is a buffer (`unpool_mat`, all ones) because the published checkpoints
    carry it; with ones this is exact nearest-neighbour upsampling.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("unpool_mat", torch.ones(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, 2H, 2W)."""
        n, c, h, w = x.shape
        m = self.unpool_mat
        out = x[:, :, :, None, :, None] * m[None, None, None, :, None, :]
        return out.reshape(n, c, 2 * h, 2 * w)


class ResidualUnit(nn.Module):
    """Pre-activation bottleneck unit: [BN-ReLU] 1x1, BN-ReLU 3x3 (stride), BN-ReLU 1x1.

    The first unit of a block has no pre-activation: the previous block ends in BN-ReLU.
    """

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int, preact: bool):
        super().__init__()
        self.stride = stride
        self.preact_bn = nn.BatchNorm2d(in_ch, eps=BN_EPS) if preact else None
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, bias=False)
        self.conv1_bn = nn.BatchNorm2d(mid_ch, eps=BN_EPS)
        self.conv2 = nn.Conv2d(mid_ch, mid_ch, 3, stride=stride, bias=False)
        self.conv2_bn = nn.BatchNorm2d(mid_ch, eps=BN_EPS)
        self.conv3 = nn.Conv2d(mid_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch of `x` (the block adds the shortcut)."""
        if self.preact_bn is not None:
            x = bn_relu(self.preact_bn, x)
        x = bn_relu(self.conv1_bn, self.conv1(x))
        x = self.conv2(tf_same_pad(x, 3, self.stride))
        x = bn_relu(self.conv2_bn, x)
        return self.conv3(x)


class ResidualBlock(nn.Module):
    """`count` bottleneck units, the first with a strided 1x1 projection shortcut, each
    later one with the identity shortcut; ends in BN-ReLU."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, count: int, stride: int):
        super().__init__()
        self.units = nn.ModuleList(
            ResidualUnit(
                in_ch if i == 0 else out_ch, mid_ch, out_ch, stride if i == 0 else 1, i > 0
            )
            for i in range(count)
        )
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
        self.out_bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_ch, H, W) -> (N, out_ch, H / stride, W / stride)."""
        skip = self.shortcut(x)
        for unit in self.units:
            x = unit(x) + skip
            skip = x
        return bn_relu(self.out_bn, x)


class DenseUnit(nn.Module):
    """BN-ReLU 1x1 (128), BN-ReLU valid kxk grouped (4 groups, 32 out)."""

    def __init__(self, in_ch: int, ksize: int):
        super().__init__()
        self.preact_bn = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.conv1 = nn.Conv2d(in_ch, 128, 1, bias=False)
        self.conv1_bn = nn.BatchNorm2d(128, eps=BN_EPS)
        self.conv2 = nn.Conv2d(128, 32, ksize, groups=4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The 32 new feature maps (spatially ksize - 1 smaller than `x`)."""
        x = bn_relu(self.preact_bn, x)
        x = bn_relu(self.conv1_bn, self.conv1(x))
        return self.conv2(x)


class DenseBlock(nn.Module):
    """Densely connected units: each appends 32 maps to the centre-cropped input."""

    def __init__(self, in_ch: int, ksize: int, count: int):
        super().__init__()
        self.units = nn.ModuleList(DenseUnit(in_ch + 32 * i, ksize) for i in range(count))
        self.out_bn = nn.BatchNorm2d(in_ch + 32 * count, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C + 32 count, H - count (k - 1), ...), ending in BN-ReLU."""
        for unit in self.units:
            new = unit(x)
            x = torch.cat([crop_center(x, new.shape[2], new.shape[3]), new], dim=1)
        return bn_relu(self.out_bn, x)


class UpStage(nn.Module):
    """Decoder stage: valid kxk conv, dense block, 1x1 conv."""

    def __init__(self, in_ch: int, mid_ch: int, ksize: int, count: int):
        super().__init__()
        self.conva = nn.Conv2d(in_ch, mid_ch, ksize, bias=False)
        self.dense = DenseBlock(mid_ch, ksize, count)
        out_ch = mid_ch + 32 * count
        self.convf = nn.Conv2d(out_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's output (no activation after the final 1x1 conv)."""
        return self.convf(self.dense(self.conva(x)))


class SameConv(nn.Module):
    """Decoder stage u1: one kxk conv with TensorFlow 'same' padding."""

    def __init__(self, in_ch: int, out_ch: int, ksize: int):
        super().__init__()
        self.ksize = ksize
        self.conva = nn.Conv2d(in_ch, out_ch, ksize, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same-size output."""
        return self.conva(tf_same_pad(x, self.ksize, 1))


class Head(nn.Module):
    """Decoder stage u0: BN-ReLU then a 1x1 conv with bias to the branch's channels."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (no activation)."""
        return self.conv(bn_relu(self.bn, x))


class DecoderBranch(nn.Module):
    """One output branch (np, hv, tp or ls): three upsampling stages and a head."""

    def __init__(self, out_ch: int, ksize: int):
        super().__init__()
        self.u3 = UpStage(1024, 256, ksize, 8)
        self.u2 = UpStage(512, 128, ksize, 4)
        self.u1 = SameConv(256, 64, ksize)
        self.u0 = Head(64, out_ch)

    def forward(self, feats: list[torch.Tensor], up: Upsample2x) -> torch.Tensor:
        """Logits from the encoder features [d0, d1, d2, d3] (already cropped)."""
        d0, d1, d2, d3 = feats
        x = self.u3(up(d3) + d2)
        x = self.u2(up(x) + d1)
        x = self.u1(up(x) + d0)
        return self.u0(x)

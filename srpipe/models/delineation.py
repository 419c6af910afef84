"""Field delineation: a compact ResUNet-style multi-task net (extent, boundary, distance to boundary).

Used frozen for the perceptual loss (its encoder activations) and to score SR in evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ResBlock(nn.Module):
    """Pre-activation residual block with a 1x1 skip when channels change: (B, c_in, H, W) -> (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in),
            nn.ReLU(),
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class DelineationNet(nn.Module):
    """(B, bands, H, W) label-scaled image -> (B, 3, H, W): extent logit, boundary logit, distance in [0, 1]."""

    def __init__(self, bands: int = 4, channels: int = 16, depth: int = 3) -> None:
        super().__init__()
        widths = [channels * 2**i for i in range(depth)]
        self.stem = nn.Conv2d(bands, widths[0], 3, padding=1)
        self.down = nn.ModuleList(
            [_ResBlock(widths[max(i - 1, 0)], w) for i, w in enumerate(widths)]
        )  # level i works at 1/2**i resolution
        self.up = nn.ModuleList([_ResBlock(widths[i] + widths[i - 1], widths[i - 1]) for i in range(depth - 1, 0, -1)])
        self.head = nn.Conv2d(widths[0], 3, 1)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder activations, one (B, C_i, H/2**i, W/2**i) per level (the perceptual loss compares these)."""
        x = self.stem(x)
        out = []
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if i else x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = self.features(x)
        y = skips[-1]
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], 1))
        out = self.head(y)
        return torch.cat([out[:, :2], torch.sigmoid(out[:, 2:])], 1)

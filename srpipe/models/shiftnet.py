"""ShiftNet (HomographyNet-style, Deudon et al. 2020): the (dx, dy) translation that registers SR onto its label."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srpipe.models.lanczos import lanczos_shift


def _block(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return [*layers, nn.MaxPool2d(2)] if pool else layers


class ShiftNet(nn.Module):
    """(B, bands, H, W) SR and label -> (B, 2) shift (dx, dy) in label pixels that moves SR onto the label."""

    def __init__(self, channels: int = 64, pool: int = 1) -> None:
        super().__init__()
        self.pool = pool  # > 1: estimate the shift on the pair average-pooled by `pool` (pool^2 x cheaper)
        c = channels
        self.features = nn.Sequential(
            *_block(2, c, False),
            *_block(c, c, True),
            *_block(c, c, False),
            *_block(c, 2 * c, True),
            *_block(2 * c, 2 * c, False),
            *_block(2 * c, 2 * c, True),
            nn.AdaptiveAvgPool2d(4),  # the original's fixed 128 px crop, made size-agnostic
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(2 * c * 16, 1024), nn.ReLU())
        self.out = nn.Linear(1024, 2, bias=False)
        nn.init.zeros_(self.out.weight)  # start from "no shift", as the original does

    def forward(self, sr: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        pair = torch.stack([sr.mean(1), label.mean(1)], 1)  # band-mean luminance of each image
        pair = pair - pair.mean((2, 3), keepdim=True)
        if self.pool > 1:
            pair = F.avg_pool2d(pair, self.pool)
        return self.out(self.head(self.features(pair))) * self.pool  # in label pixels at any pooling

    def register(self, sr: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (SR Lanczos-shifted onto the label (B, bands, H, W), the (B, 2) shifts used)."""
        shifts = self(sr, label)
        return lanczos_shift(sr, shifts), shifts

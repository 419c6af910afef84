"""Sub-pixel image shifts with a separable Lanczos kernel (as in HighRes-Net's registration at the loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lanczos_kernel(shift: torch.Tensor, a: int = 3) -> torch.Tensor:
    """(B,) shifts in pixels -> (B, 2a+1) normalised Lanczos-`a` taps that move a signal by +shift."""
    offsets = torch.arange(-a, a + 1, dtype=shift.dtype, device=shift.device)
    x = offsets[None] + shift[:, None]  # tap n reads input(i + n), i.e. output(i) = input(i - shift)
    taps = torch.sinc(x) * torch.sinc(x / a) * (x.abs() < a).to(x.dtype)
    return taps / taps.sum(1, keepdim=True)


def lanczos_shift(image: torch.Tensor, shifts: torch.Tensor, a: int = 3) -> torch.Tensor:
    """(B, C, H, W) images moved by (B, 2) shifts (dx along W, dy along H, pixels); reflect-padded at the border."""
    b, c, h, w = image.shape
    kx = lanczos_kernel(shifts[:, 0], a).repeat_interleave(c, 0)  # (B*C, 2a+1)
    ky = lanczos_kernel(shifts[:, 1], a).repeat_interleave(c, 0)
    x = F.pad(image.reshape(1, b * c, h, w), (a, a, a, a), mode="reflect")
    x = F.conv2d(x, kx[:, None, None, :].to(x.dtype), groups=b * c)
    x = F.conv2d(x, ky[:, None, :, None].to(x.dtype), groups=b * c)
    return x.reshape(b, c, h, w)

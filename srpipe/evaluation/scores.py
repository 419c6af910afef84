"""Per-sample scores of an image against its label: MSE, PSNR, SSIM and cPSNR, all inside the same border crop."""

from __future__ import annotations

import numpy as np
import torch

from srpipe.metrics import MSE_FLOOR, masked_ssim
from srpipe.training.losses import cpsnr, crop

METRICS = ("mse", "psnr", "ssim", "cpsnr")


@torch.no_grad()
def score(
    image: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor, border: int, max_shift: int
) -> dict[str, np.ndarray]:
    """(B,) scores of (B, C, H, W) `image` (clamped to [0, 1]) against `hr` on its (B, H, W) clear mask.

    MSE, PSNR and SSIM are on the pixels inside `border` px (the training loss's crop); cPSNR (PROBA-V: best integer
    shift up to `max_shift` px, per-band brightness bias removed) scores the same pixels, shifting the label into the
    crop's margin (so `border` >= `max_shift`).
    """
    if border < max_shift:
        raise ValueError(f"border {border} px < cPSNR max shift {max_shift} px: shifted labels would leave the image")
    image = image.clamp(0, 1)
    inner, label, m = crop(image, border), crop(hr, border), crop(mask, border)
    w = m[:, None].to(image.dtype)
    mse = ((inner - label) ** 2 * w).sum((1, 2, 3)) / (w.sum((1, 2, 3)) * image.shape[1]).clamp_min(1)
    margin = border - max_shift
    registered = cpsnr(crop(image, margin), crop(hr, margin), crop(mask, margin), max_shift)
    scores = {
        "mse": mse,
        "psnr": -10 * torch.log10(mse.clamp_min(MSE_FLOOR)),
        "ssim": masked_ssim(inner, label, m),
        "cpsnr": registered,
    }
    return {k: v.double().numpy() for k, v in scores.items()}


def cpsnr_score(border: int, max_shift: int):
    """A (image, hr, mask) -> (B,) cPSNR tensor function with this crop (for tuning baselines)."""

    def fn(image: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(score(image, hr, mask, border, max_shift)["cpsnr"])

    return fn

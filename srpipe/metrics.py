"""Image quality scores, one definition for training, evaluation and curation: masked PSNR and SSIM, PROBA-V's cPSNR,
and the per-sample scores (`score`: MSE, PSNR, SSIM and cPSNR inside one border crop).

Images are (bands, H, W) or (B, bands, H, W) with values in [0, 1] (data range 1), masks (H, W) or (B, H, W) bool
(True = clear; None = every pixel). The definitions:

- PSNR = 10 log10(1 / MSE) dB, MSE over the clear pixels of every band (floored at 1e-10, so identity is 100 dB).
- SSIM is Wang et al. (2004): Gaussian window of 11 px with sigma 1.5, K1 = 0.01, K2 = 0.03, population (co)variances.
  The local statistics of each window are Gaussian-weighted over its clear pixels only, so masked-out values never
  change a score; the SSIM map is averaged over the clear pixels at least 5 px (half a window) inside the image, and
  over bands. With every pixel clear this is exactly scikit-image's `structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)` (tests/test_metrics.py checks it).

The torch functions are the implementation (training needs gradients); the numpy ones wrap them for one image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

WINDOW_PX = 11
SIGMA_PX = 1.5
K1, K2 = 0.01, 0.03
MSE_FLOOR = 1e-10


def _gaussian_kernel(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 1, 11, 11) normalised Gaussian window, sigma 1.5 px."""
    x = torch.arange(WINDOW_PX, device=device, dtype=dtype) - WINDOW_PX // 2
    g = torch.exp(-(x**2) / (2 * SIGMA_PX**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def _full_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, H, W) bool mask of (B, C, H, W) `x`; all True when `mask` is None."""
    if mask is None:
        return torch.ones(x.shape[0], *x.shape[-2:], dtype=torch.bool, device=x.device)
    return mask


def masked_ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) SSIM of (B, C, H, W) `x` against `y` on (B, H, W) bool `mask` (module docstring); differentiable."""
    c, h, w = x.shape[1:]
    m = _full_mask(x, mask).to(x.dtype)[:, None]
    kernel = _gaussian_kernel(x.dtype, x.device)
    # normalised convolution: each window's weights restricted to its clear pixels ("valid": interior centres only)
    weight = F.conv2d(m, kernel).clamp_min(torch.finfo(x.dtype).tiny)
    # the five local moments in one depthwise convolution (one call is several times faster than five on CPU)
    moments = torch.cat([x, y, x * x, y * y, x * y], 1) * m
    means = F.conv2d(moments, kernel.expand(5 * c, 1, WINDOW_PX, WINDOW_PX), groups=5 * c) / weight
    mu_x, mu_y, xx, yy, xy = means.split(c, 1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = K1**2, K2**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    pad = WINDOW_PX // 2
    centre = m[..., pad : h - pad, pad : w - pad]
    return (s * centre).sum((1, 2, 3)) / (centre.sum((1, 2, 3)) * c).clamp_min(1)


def masked_psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) PSNR in dB of (B, C, H, W) `x`, clamped to [0, 1], against `y` on (B, H, W) bool `mask`."""
    m = _full_mask(x, mask).to(x.dtype)[:, None]
    mse = ((x.clamp(0, 1) - y) ** 2 * m).sum((1, 2, 3)) / (m.sum((1, 2, 3)) * x.shape[1]).clamp_min(1)
    return -10 * torch.log10(mse.clamp_min(MSE_FLOOR))


def _batch_of_one(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None) -> tuple[torch.Tensor, ...]:
    """(C, H, W) arrays and (H, W) mask -> float32 (1, C, H, W) tensors and (1, H, W) bool (or None).

    float32, not float64: CPU convolutions in float64 are ~20x slower, and scores need no more than ~1e-6.
    """
    x = torch.from_numpy(np.asarray(pred, np.float32))[None]
    y = torch.from_numpy(np.asarray(target, np.float32))[None]
    return x, y, None if mask is None else torch.from_numpy(np.asarray(mask, bool))[None]


def ssim(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None, clip: bool = True) -> float:
    """SSIM of (C, H, W) `pred` (clipped to [0, 1] unless `clip` is False) against `target` on (H, W) bool `mask`."""
    x, y, m = _batch_of_one(np.clip(pred, 0, 1) if clip else pred, target, mask)
    with torch.no_grad():
        return float(masked_ssim(x, y, m)[0])


def psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR in dB of (C, H, W) `pred`, clipped to [0, 1], against `target` on (H, W) bool `mask`."""
    with torch.no_grad():
        return float(masked_psnr(*_batch_of_one(pred, target, mask))[0])


def crop(x: torch.Tensor, border: int) -> torch.Tensor:
    """(..., H, W) -> (..., H - 2 border, W - 2 border)."""
    return x[..., border : x.shape[-2] - border, border : x.shape[-1] - border] if border > 0 else x


@torch.no_grad()
def cpsnr(sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor, max_shift: int = 3) -> torch.Tensor:
    """(B,) PROBA-V cPSNR in dB: best over integer shifts up to `max_shift` px of brightness-corrected masked MSE."""
    sr = sr.clamp(0, 1)
    h, w = sr.shape[-2:]
    center = crop(sr, max_shift)
    ch, cw = h - 2 * max_shift, w - 2 * max_shift
    offsets = [(u, v) for u in range(2 * max_shift + 1) for v in range(2 * max_shift + 1)]
    best = torch.full((sr.shape[0],), float("inf"), device=sr.device)
    for start in range(0, len(offsets), 7):  # 7 shifts at a time: one vectorised pass each, memory stays small
        part = torch.stack([hr[..., u : u + ch, v : v + cw] for u, v in offsets[start : start + 7]])
        m = torch.stack([mask[:, None, u : u + ch, v : v + cw] for u, v in offsets[start : start + 7]]).to(sr.dtype)
        diff = part - center
        n = m.sum((3, 4), keepdim=True).clamp_min(1)
        diff = diff - (diff * m).sum((3, 4), keepdim=True) / n
        mse = (diff**2 * m).flatten(2).sum(2) / (m.flatten(2).sum(2) * sr.shape[1]).clamp_min(1)
        best = torch.minimum(best, mse.min(0).values)
    return -10 * torch.log10(best.clamp_min(1e-10))


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

"""Noise filter scores: a label against the bicubically upsampled S2 frame, brightness-corrected, best over shifts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from srpipe import metrics

SCORE_NAMES = ("mse", "mse_corrected", "mse_ratio", "psnr", "ssim")


@dataclass(frozen=True)
class PairScores:
    """Scores of one (label, S2) pair in [0, 1] units: plain MSE, corrected MSE, their ratio, PSNR (dB), SSIM, shift."""

    mse: float
    mse_corrected: float
    mse_ratio: float
    psnr: float
    ssim: float
    shift: tuple[int, int]

    def as_array(self) -> np.ndarray:
        """(5,) float32 in the order of SCORE_NAMES."""
        return np.array([getattr(self, n) for n in SCORE_NAMES], np.float32)


def bicubic_upsample(lr: np.ndarray, scale: int) -> np.ndarray:
    """(..., 4, h, w) float32 -> (..., 4, scale*h, scale*w) bicubic (torch, as the model's baseline)."""
    x = torch.from_numpy(np.ascontiguousarray(lr, np.float32))
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:])
    up = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    return up.reshape(*lead, *up.shape[-3:]).numpy()


def pair_scores(label: np.ndarray, reference: np.ndarray, max_shift_px: int) -> PairScores:
    """Scores of (4, H, W) `label` against (4, H, W) `reference`, both scaled to about [0, 1].

    Both MSEs are the best over integer shifts of the reference up to `max_shift_px` label pixels (as the published
    code's min-shift scores); the corrected one first removes each band's mean difference (brightness). PSNR and SSIM
    (`srpipe.metrics`, every pixel clear) are taken at the corrected MSE's shift, with that correction.
    """
    s = max_shift_px
    _, h, w = label.shape
    core = label[:, s : h - s, s : w - s]
    best, mse = (np.inf, (0, 0), core), np.inf
    for dy in range(-s, s + 1):
        for dx in range(-s, s + 1):
            moved = reference[:, s + dy : h - s + dy, s + dx : w - s + dx]
            mse = min(mse, float(((core - moved) ** 2).mean()))
            corrected = moved + (core - moved).mean(axis=(1, 2), keepdims=True)
            mse_corrected = float(((core - corrected) ** 2).mean())
            if mse_corrected < best[0]:
                best = (mse_corrected, (dy, dx), corrected)
    mse_corrected, shift, corrected = best
    mse_corrected = max(mse_corrected, 1e-10)
    ssim = metrics.ssim(corrected, core, clip=False)
    return PairScores(
        mse, mse_corrected, mse / mse_corrected, float(10 * np.log10(1 / mse_corrected)), float(ssim), shift
    )


def passes_noise_filter(scores: np.ndarray, min_ssim: float, min_psnr_db: float, max_mse_ratio: float) -> np.ndarray:
    """(N,) bool: samples whose (N, 5) scores (SCORE_NAMES) have SSIM and PSNR above and MSE ratio below the limits."""
    named = dict(zip(SCORE_NAMES, scores.T, strict=True))
    return (named["ssim"] > min_ssim) & (named["psnr"] > min_psnr_db) & (named["mse_ratio"] < max_mse_ratio)

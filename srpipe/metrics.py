"""Image quality scores (scikit-image): PSNR and SSIM of (bands, H, W) images with values in [0, 1]."""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def psnr(pred: np.ndarray, target: np.ndarray) -> float:
    """PSNR in dB of (bands, H, W) `pred` against `target`, data range 1."""
    return float(peak_signal_noise_ratio(target, np.clip(pred, 0, 1), data_range=1.0))


def ssim(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean SSIM over bands of (bands, H, W) `pred` against `target`, data range 1."""
    return float(structural_similarity(target, np.clip(pred, 0, 1), data_range=1.0, channel_axis=0))

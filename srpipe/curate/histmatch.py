"""Histogram matching of a label to an S2 reference, per band (scikit-image), so labels get S2-like radiometry."""

from __future__ import annotations

import numpy as np
from skimage.exposure import match_histograms as _skimage_match


def match_histograms(label: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Return (4, H, W) float32: `label` (4, H, W) with each band's CDF matched to `reference` (4, h, w), any size."""
    return _skimage_match(label, reference, channel_axis=0).astype(np.float32)

"""Checks of SR applied at S2's native 10 m, where no reference exists: consistency, sharpness and seams.

A model trained on the scaled analogue (40 m -> 10 m) applied to 10 m input gives 2.5 m output with nothing to score
it against. What can be checked: seen back through the S2 imaging chain (`consistency.degrade`) the SR should
reproduce its input (`consistency_by_band`); it should be sharper than bicubic (`gradient_ratio`,
`high_frequency_ratio`); and the mosaic should show no step where one tile's core meets the next (`seam_ratio` at the
pixels of `core_edges_px`, against the same statistic everywhere else).

Images are (C, H, W) float32 reflectance, bands B02, B03, B04, B08; S2 inputs (C, h, w) with H = scale h.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from rasterio import Affine
from skimage.filters import sobel

from srpipe.evaluation.s2_consistency import consistency_scores, degrade
from srpipe.models.highresnet import bicubic

MSE_FLOOR = 1e-10  # PSNR of an exact match: 100 dB, not infinity
HALF_NYQUIST = 0.25  # cycles per pixel: the top half of the frequencies an image's pixels can hold


def bicubic_up(lr: np.ndarray, scale: int) -> np.ndarray:
    """(C, h, w) -> (C, scale h, scale w) float32 bicubic upsampling (the model's baseline, `highresnet.bicubic`)."""
    with torch.no_grad():
        return bicubic(torch.from_numpy(np.ascontiguousarray(lr, np.float32))[None], scale)[0].numpy()


def consistency_by_band(
    sr: np.ndarray, lr: np.ndarray, scale: int, psf_sigma_px: float, valid: np.ndarray | None = None
) -> dict[str, list[float] | float | int]:
    """Agreement of `degrade(sr)` with the S2 input it came from, on the input's valid pixels whose footprint is finite.

    `sr` (C, H, W), `lr` (C, h, w), `valid` (h, w) bool (None = all); NaN = nodata in either. Returns per band "mae",
    "bias" (degraded SR - input) in reflectance and "psnr_db" (peak 1); "sam_deg", the mean spectral angle in degrees
    between the degraded SR's and the input's band vectors; "n_pixels", the input pixels compared.
    """
    sr, lr = np.asarray(sr, np.float32), np.asarray(lr, np.float32)
    h, w = lr.shape[1:]
    if sr.shape[1:] != (scale * h, scale * w):
        raise ValueError(f"SR {sr.shape} is not {scale}x the S2 input {lr.shape}")
    # a degraded pixel is trusted only if no nodata SR pixel leaked into it through the PSF or the area mean
    nodata = (~np.isfinite(sr).all(axis=0)).astype(np.float32)
    leaked = degrade(nodata[None, None], scale, psf_sigma_px)[0, 0] > 0
    mask = np.isfinite(lr).all(axis=0) & ~leaked & (np.ones((h, w), bool) if valid is None else np.asarray(valid))
    sr, lr = np.nan_to_num(sr), np.nan_to_num(lr)
    scores = consistency_scores(sr[None], lr[None], mask[None], scale, psf_sigma_px)
    diff = degrade(sr[None], scale, psf_sigma_px)[0] - lr
    mse = (diff.astype(np.float64) ** 2 * mask).sum(axis=(1, 2)) / max(int(mask.sum()), 1)
    return {
        "mae": [float(v) for v in scores["mae"][0]],
        "bias": [float(v) for v in scores["bias"][0]],
        "psnr_db": [float(-10 * np.log10(max(v, MSE_FLOOR))) for v in mse],
        "sam_deg": float(scores["sam_deg"][0]),
        "n_pixels": int(mask.sum()),
    }


def _finite(*images: np.ndarray) -> None:
    """ValueError unless every image is finite (sharpness is measured on nodata-free crops)."""
    for image in images:
        if not np.isfinite(image).all():
            raise ValueError("sharpness needs images without NaN/inf; crop to the valid area first")


def gradient_ratio(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(C, H, W) pair -> (C,) mean Sobel gradient magnitude (skimage.filters.sobel) of `image` / `reference`.

    Above 1: `image` has the steeper edges. The outermost pixel ring is left out (Sobel's border handling).
    """
    _finite(image, reference)

    def mean_gradient(x: np.ndarray) -> np.ndarray:
        return np.array([sobel(band.astype(np.float64))[1:-1, 1:-1].mean() for band in x])

    return mean_gradient(image) / mean_gradient(reference)


def high_frequency_power(image: np.ndarray, cutoff: float = HALF_NYQUIST) -> np.ndarray:
    """(C, H, W) -> (C,) mean spectral power above `cutoff` cycles/px (radial; Nyquist 0.5), band mean removed and a
    2-D Hann window applied, so that the image border's jump adds no false high frequencies."""
    _finite(image)
    h, w = image.shape[1:]
    window = np.outer(np.hanning(h), np.hanning(w))
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))
    high = radius > cutoff
    x = image.astype(np.float64)
    x = (x - x.mean(axis=(1, 2), keepdims=True)) * window
    power = np.abs(np.fft.fft2(x)) ** 2
    return power[:, high].mean(axis=1)


def high_frequency_ratio(image: np.ndarray, reference: np.ndarray, cutoff: float = HALF_NYQUIST) -> np.ndarray:
    """(C, H, W) pair -> (C,) `high_frequency_power` of `image` / `reference`; above 1: `image` holds more detail."""
    return high_frequency_power(image, cutoff) / high_frequency_power(reference, cutoff)


def core_edges_px(
    cores: Iterable[tuple[float, float, float, float]], transform: Affine, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inner tile-core edges of a (height, width) mosaic on `transform`: (columns, rows) b, sorted, where one core's
    pixels end at b - 1 and the next core's begin at b (the mosaic's outer border left out)."""
    xs, ys = set(), set()
    for minx, miny, maxx, maxy in cores:
        xs.update((minx, maxx))
        ys.update((miny, maxy))
    cols = {round((x - transform.c) / transform.a) for x in xs}
    rows = {round((y - transform.f) / transform.e) for y in ys}
    return (
        np.array(sorted(b for b in cols if 0 < b < width), int),
        np.array(sorted(b for b in rows if 0 < b < height), int),
    )


def seam_ratio(image: np.ndarray, edges_px: np.ndarray, axis: int, period: int = 1) -> np.ndarray:
    """(C, H, W) image -> (C,) mean |x[b] - x[b - 1]| across the `edges_px` b along `axis` (-1: columns, so the
    vertical seams; -2: rows) / the same mean over every other adjacent pair at the same position modulo `period`;
    ~1: no seam. NaN pairs are skipped. `period` = the upsampling scale compares like with like: an upsampler's steps
    depend on the sub-pixel phase (bicubic's are largest across the input pixels' edges, where core edges lie)."""
    image = np.asarray(image, np.float32)
    step = np.moveaxis(np.abs(np.diff(image, axis=axis)), axis, -1)  # (C, other, pairs): |x[i + 1] - x[i]| at i
    pair = np.arange(step.shape[-1])
    first = np.asarray(edges_px, int) - 1
    across = np.isin(pair, first)
    others = np.isin(pair % period, first % period) & ~across
    return np.nanmean(step[..., across], axis=(1, 2)) / np.nanmean(step[..., others], axis=(1, 2))


def seam_percentile(image: np.ndarray, edges_px: np.ndarray, axis: int, period: int = 1) -> np.ndarray:
    """(C, H, W) image -> (C,) percentile (0-100) of the edges' mean |step| among the mean |steps| of every other line
    of pairs at the same position modulo `period` along `axis` (as `seam_ratio`); ~50: the edges are ordinary lines,
    near 100: they stand out. Robust to the scene content where the few edge lines happen to lie."""
    image = np.asarray(image, np.float32)
    step = np.moveaxis(np.abs(np.diff(image, axis=axis)), axis, -1)
    line = np.nanmean(step, axis=1)  # (C, pairs): mean |step| of each line of pairs
    pair = np.arange(line.shape[-1])
    first = np.asarray(edges_px, int) - 1
    across = np.isin(pair, first)
    others = np.isin(pair % period, first % period) & ~across
    edge = line[:, across].mean(axis=1, keepdims=True)
    return 100 * (line[:, others] < edge).mean(axis=1)

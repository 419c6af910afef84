"""Consistency with Sentinel-2 and the correctness of added detail (ESA OpenSR's opensr-test ideas).

SR must add detail without changing what S2 measured: seen back through S2's imaging chain (`degrade`), it should
reproduce the S2 frame it came from (`consistency_scores`, band MAE and spectral angle, as opensr-test's
"reflectance" and "spectral" consistency). `correctness_shares` sorts the detail SR adds into improvement, omission
and hallucination with opensr-test's definitions (Aybar et al. 2024, see there).

SR, labels and upsampled frames are (B, 4, H, W) float32 in [0, 1] (B02, B03, B04, B08), S2 frames (B, 4, h, w) with
H = scale h; masks are bool, True = clear.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.special import softmax
from skimage.exposure import match_histograms
from skimage.measure import block_reduce

from srpipe.sources.sample.source import PSF_SIGMA_LR_PX

S2_MTF_NYQUIST = 0.3  # MTF at Nyquist assumed for S2 MSI 10 m bands (also the MTF-matched filters' default gain)
EPS = 1e-8  # opensr-test's epsilon in the normalised difference
D_REF_FLOOR = 1e-6  # keeps d_im / d_ref finite where LR-up equals HR but SR does not
GAMMA = 0.05  # opensr-test's im_score = om_score = ha_score (Config defaults, v1.3.3)
TEMPERATURE = 0.25  # opensr-test's correctness_temperature
THRESHOLD_QUANTILE = 0.75  # opensr-test's gradient_threshold "auto" (= "auto75") of Metrics.compute


def gaussian_sigma_for_mtf(mtf_nyquist: float) -> float:
    """Sigma in pixels of the Gaussian PSF whose MTF at Nyquist (0.5 cycles/pixel) is `mtf_nyquist`, in (0, 1).

    A Gaussian PSF of sigma s px has MTF(f) = exp(-2 pi^2 s^2 f^2), so s = sqrt(-2 ln MTF(0.5)) / pi: 0.494 px for an
    MTF of 0.3. This is the MTF-matched Gaussian of pansharpening protocols (Aiazzi et al. 2006, "MTF-tailored
    multiscale fusion of high-resolution MS and Pan imagery", PE&RS 72(5); Vivone et al. 2015, "A critical comparison
    among pansharpening algorithms", IEEE TGRS 53(5)), whose default gain at Nyquist is 0.3.
    """
    if not 0 < mtf_nyquist < 1:
        raise ValueError(f"the MTF at Nyquist must be in (0, 1), not {mtf_nyquist}")
    return math.sqrt(-2 * math.log(mtf_nyquist)) / math.pi


def sample_psf_sigma_px(scale: int) -> float:
    """PSF sigma in label pixels of the `sample` source's simulated S2: its PSF_SIGMA_LR_PX (0.5 S2 px) x scale."""
    return PSF_SIGMA_LR_PX * scale


def s2_psf_sigma_px(scale: int, mtf_nyquist: float = S2_MTF_NYQUIST) -> float:
    """PSF sigma in label pixels of a Gaussian S2 PSF with `mtf_nyquist` at S2's Nyquist: 1.98 px at scale 4, MTF 0.3.

    For real S2 data, not the sample (whose 0.5 S2 px is the same blur to within 1 %).
    """
    return gaussian_sigma_for_mtf(mtf_nyquist) * scale


def degrade(sr: np.ndarray, scale: int, psf_sigma_px: float) -> np.ndarray:
    """(B, C, H, W) SR -> (B, C, H // scale, W // scale) on the S2 grid: Gaussian PSF (sigma in label px), area mean.

    The `sample` source's imaging chain without its random shift, gain and noise: scipy's gaussian_filter with
    reflected borders, then the mean of each scale x scale block (rows and columns past a multiple of scale dropped).
    """
    sr = np.asarray(sr, np.float32)
    b, c, height, width = sr.shape
    blurred = ndimage.gaussian_filter(sr, (0, 0, psf_sigma_px, psf_sigma_px), mode="reflect")
    h, w = height // scale, width // scale
    return blurred[..., : h * scale, : w * scale].reshape(b, c, h, scale, w, scale).mean(axis=(3, 5))


def _masked_mean(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, ..., h, w) values, (B, h, w) bool -> (B, ...) mean over clear pixels; NaN where none is clear."""
    m = mask.reshape(mask.shape[0], *([1] * (x.ndim - 3)), *mask.shape[1:]).astype(np.float64)
    count = m.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((x * m).sum(axis=(-2, -1)) / count).astype(np.float32)


def consistency_scores(
    sr: np.ndarray,
    lr_frame: np.ndarray,
    lr_mask: np.ndarray,
    scale: int,
    psf_sigma_px: float,
    lr_to_hr: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Per-sample agreement of `degrade(sr)` with the S2 frame it came from, on the frame's clear pixels.

    `sr` (B, 4, H, W), `lr_frame` (B, 4, h, w), `lr_mask` (B, h, w). `lr_to_hr` = (gain, offset), each (4,), maps the
    frame's LR-scaled values to label-scaled ones first (as the mean-matching loss does); None if they share a scale.
    Returns "mae" (B, 4) mean |degraded SR - frame| per band, "bias" (B, 4) mean (degraded SR - frame), both in label
    units, and "sam_deg" (B,) mean spectral angle in degrees between the 4-band vectors. NaN where no pixel is clear.
    """
    low = degrade(sr, scale, psf_sigma_px)
    frame = np.asarray(lr_frame, np.float32)
    if frame.shape != low.shape:
        raise ValueError(f"S2 frame {frame.shape} does not match SR {np.shape(sr)} degraded by {scale}: {low.shape}")
    if lr_to_hr is not None:
        gain, offset = (np.asarray(v, np.float32)[None, :, None, None] for v in lr_to_hr)
        frame = frame * gain + offset
    mask = np.asarray(lr_mask, bool)
    diff = low - frame
    norms = np.linalg.norm(low, axis=1) * np.linalg.norm(frame, axis=1)
    # a zero vector has no direction to disagree on: angle 0
    cos = np.where(norms > 0, (low * frame).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    return {
        "mae": _masked_mean(np.abs(diff), mask),
        "bias": _masked_mean(diff, mask),
        "sam_deg": _masked_mean(angle, mask),
    }


def _harmonise(sr: np.ndarray, hr: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, C, H, W) SR with each band's clear pixels histogram-matched to the label's (skimage match_histograms)."""
    out = sr.copy()
    for i in range(sr.shape[0]):
        m = mask[i]
        if m.any():
            for c in range(sr.shape[1]):
                out[i, c][m] = match_histograms(sr[i, c][m], hr[i, c][m])
    return out


def _distance(x: np.ndarray, y: np.ndarray, kind: str) -> np.ndarray:
    """(B, C, H, W) pair -> (B, H, W) band-mean distance: "nd" |x - y| / |x + y| or "l1" |x - y|."""
    if kind == "nd":
        return (np.abs(x - y) / np.abs(x + y + EPS)).mean(axis=1)
    if kind == "l1":
        return np.abs(x - y).mean(axis=1)
    raise ValueError(f"correctness distance must be 'nd' or 'l1', not {kind!r}")


def _patch_mean(d: np.ndarray, mask: np.ndarray, patch_px: int) -> np.ndarray:
    """(B, H, W) distance -> the mean over the clear pixels of its patch_px x patch_px patch, at every pixel."""
    if patch_px == 1:
        return d
    block = (1, patch_px, patch_px)
    m = mask.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = block_reduce(d * m, block, np.sum) / block_reduce(m, block, np.sum)  # pads with 0: not clear
    full = means.repeat(patch_px, axis=1).repeat(patch_px, axis=2)
    return full[:, : d.shape[1], : d.shape[2]]


def _class_scores(a: np.ndarray, b: np.ndarray, gamma: tuple[float, float, float]) -> np.ndarray:
    """(3, ...) distances to improvement, omission, hallucination from relative d_im `a` and d_om `b` (low = close)."""
    h = a + b - 1
    improvement = a + b * (1 - np.exp(-gamma[0] * h))
    omission = b + a * (1 - np.exp(-gamma[1] * h))
    hallucination = np.exp(-gamma[2] * a * b)
    return np.stack([improvement, omission, hallucination])


def correctness_shares(
    sr: np.ndarray,
    lr_up: np.ndarray,
    hr: np.ndarray,
    mask: np.ndarray,
    distance: str = "nd",
    patch_px: int = 1,
    threshold_quantile: float = THRESHOLD_QUANTILE,
    threshold: float | None = None,
    gamma: tuple[float, float, float] = (GAMMA, GAMMA, GAMMA),
    temperature: float = TEMPERATURE,
    soft: bool = True,
    harmonise: bool = True,
) -> dict[str, np.ndarray]:
    """Per-sample (B,) shares of improvement, omission and hallucination (opensr-test's correctness scores).

    `sr`, `lr_up` (the bicubic-upsampled S2 frame, in label units), `hr` (B, 4, H, W); `mask` (B, H, W). Definition
    of opensr-test v1.3.3 (github.com/ESAOpenSR/opensr-test, opensr_test/correctness.py and Metrics.correctness in
    main.py; Aybar et al. 2024, "A Comprehensive Benchmark for Optical Remote Sensing Image Super-Resolution", IEEE
    GRSL 21, doi:10.1109/LGRS.2024.3401394), on the clear pixels:
    1. With `harmonise`, SR is histogram-matched to HR per band (their SR_harm; their phase-correlation
       co-registration of SR to HR is left to the caller).
    2. Per pixel, d_ref = d(LR-up, HR), d_im = d(SR, HR), d_om = d(SR, LR-up), d the band mean of the normalised
       difference |x - y| / |x + y| ("nd", their default) or of |x - y| ("l1"); with `patch_px` > 1 each map is first
       averaged over non-overlapping patches (their "patch" aggregation).
    3. A pixel is scored if any of d_ref, d_im, d_om exceeds t: `threshold`, or else the `threshold_quantile`
       quantile of the sample's d_ref (their "auto" = 0.75). Flat pixels, where LR-up already matches HR and SR
       changes nothing, hold no detail to judge.
    4. a = d_im / d_ref, b = d_om / d_ref (in LR-HR units), H = a + b - 1, and the distances to each class are
       improvement = a + b (1 - exp(-g_im H)), omission = b + a (1 - exp(-g_om H)), hallucination = exp(-g_ha a b),
       `gamma` = (g_im, g_om, g_ha) = 0.05 each. SR = HR gives (0, 1, 1); SR = LR-up gives (1, 0, 1).
    5. Memberships are the softmin of the three with `temperature` T = 0.25, p_k = exp(-s_k / T) / sum_j exp(-s_j / T);
       a share is the mean p_k over the scored pixels (their "softmin" norm), or with `soft` False the fraction of
       scored pixels whose smallest distance is k (their "percent" norm).
    Returns "improvement", "omission", "hallucination" (B,) in [0, 1] summing to 1, and "n_pixels" (B,) int, the
    scored pixels; shares are NaN where none is scored.
    """
    sr, lr_up, hr = (np.asarray(x, np.float64) for x in (sr, lr_up, hr))
    mask = np.asarray(mask, bool)
    if not sr.shape == lr_up.shape == hr.shape or mask.shape != (sr.shape[0], *sr.shape[2:]):
        raise ValueError(f"SR {sr.shape}, LR-up {lr_up.shape}, HR {hr.shape} and mask {mask.shape} do not match")
    if harmonise:
        sr = _harmonise(sr, hr, mask)
    d_ref, d_im, d_om = (
        _patch_mean(_distance(x, y, distance), mask, patch_px) for x, y in ((lr_up, hr), (sr, hr), (sr, lr_up))
    )
    shares = np.full((3, sr.shape[0]), np.nan)
    n_pixels = np.zeros(sr.shape[0], np.int64)
    for i in range(sr.shape[0]):
        if not mask[i].any():
            continue
        t = threshold if threshold is not None else np.quantile(d_ref[i][mask[i]], threshold_quantile)
        scored = mask[i] & ((d_ref[i] > t) | (d_im[i] > t) | (d_om[i] > t))
        n_pixels[i] = scored.sum()
        if n_pixels[i] == 0:
            continue
        ref = np.maximum(d_ref[i][scored], D_REF_FLOOR)
        scores = _class_scores(d_im[i][scored] / ref, d_om[i][scored] / ref, gamma)
        if soft:
            shares[:, i] = softmax(-scores / temperature, axis=0).mean(axis=1)
        else:
            shares[:, i] = np.bincount(scores.argmin(axis=0), minlength=3) / n_pixels[i]
    return {"improvement": shares[0], "omission": shares[1], "hallucination": shares[2], "n_pixels": n_pixels}

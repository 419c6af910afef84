"""The consistency constraints at HighRes-Net's output (`model.consistency`, in the spirit of SEN2SR's hard constraint).

`match_means` ("mean") shifts each band so that D(SR) has the reference frame's mean on its clear pixels.

`degrade` is srpipe's S2 imaging chain, D: a Gaussian PSF with scipy's "reflect" borders (the `sample` source's, and
`evaluation.s2_consistency.degrade`'s), then the mean of each scale x scale block. `constrain` ("full") corrects SR
by the pseudo-inverse of D, SR + D^T (D D^T)^-1 (x_ref - D SR) on the reference frame's clear pixels, so that D of the
result equals the reference there (to float rounding) and nothing is taken from its cloudy or padded pixels. The
correction only moves SR within D's row space: the detail D cannot see is the network's alone.

Exactness at the borders comes from working on the half-sample mirror of each image (period 2H x 2W): there the
reflect-bordered blur is a circular convolution and D D^T a circular LR convolution, inverted in the Fourier domain.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from srpipe.config import CONSTRAINTS, ModelConfig


@dataclass(frozen=True)
class Constraint:
    """The consistency constraint one forward pass applies, a plain value passed to it (never state on a shared net):
    `mode` one of `config.CONSTRAINTS`, the PSF's sigma in output pixels, and "full"'s regularisation (mu)."""

    mode: str
    psf_sigma_px: float
    regularisation: float

    def __post_init__(self) -> None:
        if self.mode not in CONSTRAINTS:
            raise ValueError(f"model.consistency = {self.mode!r}: one of {', '.join(CONSTRAINTS)}")

    @classmethod
    def of(cls, settings: ModelConfig, scale: int) -> Constraint:
        """The constraint a [model] section sets, for a net of `scale`."""
        return cls(settings.consistency, settings.psf_sigma_lr_px * scale, settings.consistency_regularisation)


TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default: the kernel ends at 4 sigma


def gaussian_taps(sigma_px: float) -> torch.Tensor:
    """(2r + 1,) float64 normalised Gaussian taps, r = int(4 sigma + 0.5), as scipy's gaussian_filter builds them."""
    radius = int(TRUNCATE * sigma_px + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (x / sigma_px) ** 2)
    return taps / taps.sum()


def _mirror(x: torch.Tensor) -> torch.Tensor:
    """(..., H, W) -> (..., 2H, 2W): the half-sample symmetric extension (a b c | c b a), one period of it."""
    x = torch.cat([x, x.flip(-1)], -1)
    return torch.cat([x, x.flip(-2)], -2)


def _circular_kernel(taps: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) float64: the 1-D taps wrapped onto a circle of n samples (centre at index 0)."""
    out = torch.zeros(n, dtype=torch.float64)
    radius = len(taps) // 2
    for i, t in enumerate(taps):
        out[(i - radius) % n] += t
    return out


@functools.lru_cache(maxsize=16)
def _spectra(height: int, width: int, scale: int, sigma_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The mirrored domain's blur spectrum (2H, 2W // 2 + 1) and D D^T's LR spectrum (2h, 2w // 2 + 1), float64."""
    taps = gaussian_taps(sigma_px)
    rows, cols = (torch.fft.fft(_circular_kernel(taps, 2 * n)) for n in (height, width))
    blur = (rows[:, None] * cols[None, :]).real[:, : width + 1]  # a real, even kernel: a real spectrum
    delta = torch.zeros(2 * (height // scale), 2 * (width // scale), dtype=torch.float64)
    delta[0, 0] = 1.0
    response = _down(_blur(_blur(_up(delta, scale), blur), blur), scale)  # D D^T of a delta
    return blur, torch.fft.rfft2(response)


def _blur(x: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
    """Circular convolution of (..., N, M) with the kernel of `spectrum` (N, M // 2 + 1)."""
    return torch.fft.irfft2(torch.fft.rfft2(x) * spectrum.to(x.dtype), s=x.shape[-2:])


def _down(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(..., N, M) -> (..., N / scale, M / scale) block means (A)."""
    *lead, n, m = x.shape
    return x.reshape(*lead, n // scale, scale, m // scale, scale).mean((-3, -1))


def _up(x: torch.Tensor, scale: int) -> torch.Tensor:
    """A's adjoint: each LR value spread evenly over its scale x scale block, (..., n, m) -> (..., n s, m s)."""
    return x.repeat_interleave(scale, -2).repeat_interleave(scale, -1) / scale**2


def degrade(x: torch.Tensor, scale: int, sigma_px: float) -> torch.Tensor:
    """(B, C, H, W) label grid -> (B, C, H / scale, W / scale): Gaussian PSF (sigma in label px, reflect), block mean.

    The same numbers as `evaluation.s2_consistency.degrade` (scipy) to float rounding; H and W multiples of `scale`.
    """
    height, width = x.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"SR of {height} x {width} px is not a multiple of the scale {scale}")
    blur, _ = _spectra(height, width, scale, sigma_px)
    low = _down(_blur(_mirror(x.double()), blur.to(x.device)), scale)
    return low[..., : height // scale, : width // scale].to(x.dtype)


@functools.lru_cache(maxsize=16)
def _inverse(height: int, width: int, scale: int, sigma_px: float, regularisation: float) -> torch.Tensor:
    """(2h, 2w // 2 + 1) float64: the LR filter (D D^T + mu)^-1 scaled to be exact at zero frequency, mu relative."""
    _, gram = _spectra(height, width, scale, sigma_px)
    zero = gram.real[0, 0]
    mu = regularisation * zero
    return (zero + mu) / zero / (gram.real + mu)


def constrain(
    sr: torch.Tensor,
    reference: torch.Tensor,
    clear: torch.Tensor,
    scale: int,
    sigma_px: float,
    regularisation: float = 0.0,
) -> torch.Tensor:
    """(B, C, H, W) SR, (B, C, h, w) reference frame in SR's units, (B, h, w) bool clear -> SR with D(SR) = reference.

    Only the reference's clear pixels are matched; the residual is zero elsewhere, so a cloudy or padded (all-masked)
    frame never reaches SR. `regularisation` mu > 0 (relative to D D^T at zero frequency) solves (D D^T + mu) instead
    of D D^T, rescaled to stay exact at zero frequency: the match fades above the frequencies where D passes little,
    so S2's noise there is not amplified (4.3x per label pixel at mu = 0, 1.0x at mu = 0.3). Differentiable; computed
    in float64, returned in SR's dtype.
    """
    height, width = sr.shape[-2:]
    blur, _ = _spectra(height, width, scale, sigma_px)
    inverse = _inverse(height, width, scale, sigma_px, regularisation).to(sr.device)
    x = sr.double()
    residual = (reference.double() - degrade(x, scale, sigma_px)) * clear[:, None].to(torch.float64)
    mirrored = _mirror(residual)
    solved = torch.fft.irfft2(torch.fft.rfft2(mirrored) * inverse, s=mirrored.shape[-2:])
    correction = _blur(_up(solved, scale), blur.to(x.device))[..., :height, :width]
    return (x + correction).to(sr.dtype)


def degrade_adjoint(weights: torch.Tensor, height: int, width: int, scale: int, sigma_px: float) -> torch.Tensor:
    """D^T: (..., h, w) LR weights -> (..., height, width) in float64, so that <D x, w> = <x, D^T w> exactly.

    D = crop . block mean . blur . mirror; the blur's kernel is even (a real spectrum), so it is its own adjoint, and
    the mirror's adjoint folds its four quadrants back onto the image.
    """
    blur, _ = _spectra(height, width, scale, sigma_px)
    padded = weights.new_zeros(*weights.shape[:-2], 2 * (height // scale), 2 * (width // scale), dtype=torch.float64)
    padded[..., : height // scale, : width // scale] = weights
    y = _blur(_up(padded, scale), blur.to(weights.device))
    top, bottom = y[..., :height, :], y[..., height:, :].flip(-2)
    return top[..., :width] + top[..., width:].flip(-1) + bottom[..., :width] + bottom[..., width:].flip(-1)


def match_means(
    sr: torch.Tensor, reference: torch.Tensor, clear: torch.Tensor, scale: int, sigma_px: float
) -> torch.Tensor:
    """(B, C, H, W) SR plus, per sample and band, the mean of (reference - D(SR)) over the (B, h, w) clear pixels.

    D of a constant is that constant, so afterwards D(SR) has the reference's mean on its clear pixels exactly: no
    bias, nothing else moved. A sample without a clear pixel is left as it is. The mean of D(SR) over the clear
    pixels is <SR, D^T w> with w the clear pixels' averaging weights: D^T w is computed once per batch from the mask,
    outside the graph, so the constraint costs a weighted sum per step instead of a float64 FFT and its backward.
    """
    weights = clear[:, None].to(torch.float64)
    weights = weights / weights.sum((-2, -1), keepdim=True).clamp_min(1)
    with torch.no_grad():
        dual = degrade_adjoint(weights, *sr.shape[-2:], scale, sigma_px)
    shift = (reference.double() * weights).sum((-2, -1)) - (sr.double() * dual).sum((-2, -1))
    return (sr.double() + shift[..., None, None]).to(sr.dtype)


def latest_frame(lr: torch.Tensor, lr_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last frame with clear pixels of each chronological stack: (B, K, C, h, w) -> (B, C, h, w), (B, h, w)."""
    k = lr.shape[1]
    valid = lr_mask.flatten(2).any(2).to(torch.int64) * torch.arange(1, k + 1, device=lr.device)
    idx = valid.argmax(1)
    rows = torch.arange(lr.shape[0], device=lr.device)
    return lr[rows, idx], lr_mask[rows, idx]


def noise_gain(height: int, width: int, scale: int, sigma_px: float, regularisation: float = 0.0) -> float:
    """RMS of the correction per label pixel for unit white noise per S2 pixel: what the constraint does to noise."""
    _, gram = _spectra(height, width, scale, sigma_px)
    inverse = _inverse(height, width, scale, sigma_px, regularisation)
    return math.sqrt(float((inverse**2 * gram.real).mean()) / scale**2)

"""The classical baselines SR must beat: bicubic of the latest, the closest-in-time and the median clear S2 values, and
unsharp-masked bicubic tuned on the validation tiles. All in label units (the LR scale mapped onto the label's)."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from srpipe.models.highresnet import bicubic, masked_median

SIMPLE = ("bicubic_latest", "bicubic_closest", "bicubic_median")
UNSHARP = "bicubic_unsharp"
UNSHARP_SIGMAS_PX = (1.0, 2.0)  # Gaussian sigma of the unsharp mask, label px
UNSHARP_AMOUNTS = (0.0, 0.25, 0.5, 1.0, 1.5)  # 0: sharpening does not pay on these data
TUNE_SAMPLES = 256  # validation samples the unsharp mask is tuned on


@dataclass(frozen=True)
class Unsharp:
    """Unsharp masking of one simple baseline: base + amount * (base - gaussian(base, sigma_px))."""

    base: str
    sigma_px: float
    amount: float


def _pick_per_pixel(lr: torch.Tensor, mask: torch.Tensor, priority: torch.Tensor) -> torch.Tensor:
    """(B, K, C, h, w) frames -> (B, C, h, w): per pixel the clear frame of highest (B, K) priority (>= 0); else the
    median."""
    score = mask.to(priority.dtype) * (priority[:, :, None, None] + 1)
    best = score.argmax(1)  # (B, h, w)
    picked = lr.gather(1, best[:, None, None].expand(-1, 1, lr.shape[2], -1, -1))[:, 0]
    return torch.where(mask.any(1)[:, None], picked, masked_median(lr, mask))


def _days(dates: list[str]) -> list[float]:
    """ISO dates ('' = padding) -> days since 2000 (padding: nan)."""
    base = dt.date(2000, 1, 1)
    return [(dt.date.fromisoformat(d) - base).days if d else float("nan") for d in dates]


def simple_baselines(
    lr: torch.Tensor,
    mask: torch.Tensor,
    lr_dates: list[list[str]],
    hr_dates: list[str],
    scale: int,
    lr_to_hr: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """(B, C, s*h, s*w) label-unit bicubic of the per-pixel latest clear value, the one closest to the label date, and
    the median (`SIMPLE`), from (B, K, C, h, w) LR-scaled stacks with (B, K, h, w) clear masks."""
    k = lr.shape[1]
    latest = torch.arange(k, dtype=torch.float32).expand(lr.shape[0], k)  # stacks are chronological
    gaps = torch.tensor([[abs(d - _days([h])[0]) for d in _days(ds)] for ds, h in zip(lr_dates, hr_dates, strict=True)])
    closest = (-torch.nan_to_num(gaps, nan=1e9)).argsort(1).argsort(1).float()  # rank: the nearest frame highest
    gain, offset = lr_to_hr
    images = {
        "bicubic_latest": _pick_per_pixel(lr, mask, latest),
        "bicubic_closest": _pick_per_pixel(lr, mask, closest),
        "bicubic_median": masked_median(lr, mask),
    }
    return {name: bicubic(x * gain[:, None, None] + offset[:, None, None], scale) for name, x in images.items()}


def gaussian_blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """(B, C, H, W) blurred by a separable Gaussian of `sigma_px`, reflect-padded (3 sigma)."""
    radius = max(1, round(3 * sigma_px))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    g = torch.exp(-(t**2) / (2 * sigma_px**2))
    g = (g / g.sum()).repeat(x.shape[1], 1)
    x = F.pad(x, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, g[:, None, None, :], groups=x.shape[1])
    return F.conv2d(x, g[:, None, :, None], groups=x.shape[1])


def unsharp(images: dict[str, torch.Tensor], params: Unsharp) -> torch.Tensor:
    """The unsharp-masked baseline of `params` from the simple baselines `images`."""
    base = images[params.base]
    return base + params.amount * (base - gaussian_blur(base, params.sigma_px))


def tune_unsharp(
    batches: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]],
    score: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    max_samples: int = TUNE_SAMPLES,
) -> tuple[Unsharp, float]:
    """The (base, sigma, amount) of best mean `score` over (up to `max_samples`) validation (images, hr, hr_mask)
    batches, and that score: first the best simple base, then the sigma and amount of its unsharp mask."""
    kept, n = [], 0
    for images, hr, hr_mask in batches:
        kept.append((images, hr, hr_mask))
        n += len(hr)
        if n >= max_samples:
            break

    def mean(make: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> float:
        total = sum(float(score(make(images), hr, mask).double().sum()) for images, hr, mask in kept)
        return total / max(n, 1)

    base = max(SIMPLE, key=lambda name: mean(lambda images: images[name]))
    grid = [Unsharp(base, s, a) for s, a in itertools.product(UNSHARP_SIGMAS_PX, UNSHARP_AMOUNTS)]
    scores = [mean(lambda images, p=p: unsharp(images, p)) for p in grid]
    best = int(np.argmax(scores))
    return grid[best], scores[best]

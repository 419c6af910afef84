"""Training losses of the method: registered pixel loss, ShiftNet regulariser, mean matching, perceptual, SSIM.

Images are (B, bands, H, W) float in label-scaled units ([0, 1] after curation), masks (B, H, W) bool (True = clear).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from srpipe.config import LossConfig
from srpipe.metrics import crop, masked_ssim
from srpipe.models.consistency import latest_frame
from srpipe.models.delineation import DelineationNet
from srpipe.models.lanczos import lanczos_shift
from srpipe.models.shiftnet import ShiftNet


def _masked_band_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) values, (B, 1, H, W) float mask -> (B, C, 1, 1) mean over clear pixels."""
    return (x * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp_min(1)


def pixel_loss(
    sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor, kind: str = "mse", border: int = 0, brightness: bool = True
) -> torch.Tensor:
    """Masked MSE or L1 on the crop inside `border` px, after removing the per-band mean bias (PROBA-V cMSE)."""
    sr, hr = crop(sr, border), crop(hr, border)
    m = crop(mask, border)[:, None].to(sr.dtype)
    diff = hr - sr
    if brightness:
        diff = diff - _masked_band_mean(diff, m)
    err = diff.abs() if kind == "l1" else diff**2
    return (err * m).sum() / (m.sum() * sr.shape[1]).clamp_min(1)


def shift_regulariser(shifts: torch.Tensor) -> torch.Tensor:
    """Mean L2 norm of (B, 2) shifts in pixels (ShiftNet's regulariser)."""
    return shifts.norm(dim=1).mean()


def mean_match(
    sr: torch.Tensor,
    lr: torch.Tensor,
    lr_mask: torch.Tensor,
    lr_to_hr: tuple[torch.Tensor, torch.Tensor],
    delta: float = 0.0,
) -> torch.Tensor:
    """Mean over bands of |mean SR - mean latest S2 frame| on that frame's clear pixels, in label units.

    `lr_to_hr` = (gain, offset), each (C,), maps LR-scaled values to label-scaled ones. `delta` > 0 makes it a Huber
    penalty (quadratic below `delta`, in label units), whose gradient fades at the target; 0 is the method's L1.
    """
    frame, fmask = latest_frame(lr, lr_mask)
    gain, offset = lr_to_hr
    frame = frame * gain[None, :, None, None] + offset[None, :, None, None]
    pooled = F.avg_pool2d(sr, sr.shape[-1] // frame.shape[-1])
    m = fmask[:, None].to(sr.dtype)
    gap = (_masked_band_mean(pooled, m) - _masked_band_mean(frame, m)).abs()
    if delta > 0:  # an L1 gradient never fades: under Adam it keeps crowding out the pixel term's updates
        gap = torch.where(gap < delta, 0.5 * gap**2 / delta, gap - 0.5 * delta)
    return gap.mean()


def as_trained(loss: LossConfig, consistency: str) -> LossConfig:
    """The loss terms a model with `model.consistency` trains on: under a constraint the mean term is dropped.

    The constraint matches the means by construction, so the term's gap is float rounding, and |gap| turns that into
    gradients of +-weight at random: noise that Adam amplifies and that differs with the world size.
    """
    return loss if consistency == "off" else dataclasses.replace(loss, mean_match_weight=0.0)


def gram_matrix(f: torch.Tensor) -> torch.Tensor:
    b, c = f.shape[:2]
    f = f.reshape(b, c, -1)
    return f @ f.transpose(1, 2) / f.shape[-1]


def perceptual(net: DelineationNet, sr: torch.Tensor, hr: torch.Tensor, style_weight: float = 1.0) -> torch.Tensor:
    """Feature MSE + `style_weight` x Gram MSE over the frozen delineation net's encoder levels; grads reach SR."""
    with torch.no_grad():
        target = net.features(hr)
    loss = sr.new_zeros(())
    for f_sr, f_hr in zip(net.features(sr), target, strict=True):
        loss = loss + F.mse_loss(f_sr, f_hr) + style_weight * F.mse_loss(gram_matrix(f_sr), gram_matrix(f_hr))
    return loss / len(target)


def ssim(sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of `srpipe.metrics.masked_ssim` (Wang et al. 2004 on clear pixels, data range 1)."""
    return masked_ssim(sr, hr, mask).mean()


def low_precision(x: torch.Tensor, enabled: bool) -> torch.autocast:
    """bfloat16 autocast on `x`'s device when `enabled` (the auxiliary nets' forward passes in training)."""
    return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=enabled)


def autocast_supported(device: torch.device) -> bool:
    """True where bfloat16 autocast is fast: CUDA, or a CPU whose oneDNN has native bf16 (AVX512-BF16, AMX)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def sr_losses(
    cfg: LossConfig,
    sr: torch.Tensor,
    batch: dict[str, torch.Tensor],
    shiftnet: ShiftNet | None,
    delineation: DelineationNet | None,
    lr_to_hr: tuple[torch.Tensor, torch.Tensor],
    amp: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total and each term (unweighted, detached) for one batch; zero-weight terms are not computed.

    `amp`: ShiftNet and the delineation net run under bfloat16 autocast; every loss value stays float32.
    """
    hr, mask = batch["hr"], batch["hr_mask"]
    terms: dict[str, torch.Tensor] = {}
    total = sr.new_zeros(())
    registered = sr
    if cfg.register and shiftnet is not None:
        with low_precision(sr, amp):
            shifts = shiftnet(sr, hr).float()
        registered = lanczos_shift(sr, shifts)  # float32: the pixel loss sees the full precision of SR
        terms["shift_reg"] = shift_regulariser(shifts)
        total = total + cfg.shift_reg_weight * terms["shift_reg"]
    terms["pixel"] = pixel_loss(registered, hr, mask, cfg.pixel, cfg.crop_border_px, cfg.brightness_correction)
    total = total + terms["pixel"]
    if cfg.register and shiftnet is not None:
        # ShiftNet learns from the pixel loss alone (as in HighRes-Net): Adam scales any gradient up to a full step,
        # so even a lightly weighted perceptual or SSIM term would otherwise steer the shifts away from registration
        registered = lanczos_shift(sr, shifts.detach())
    if cfg.brightness_correction:  # perceptual and SSIM see bias-corrected SR too: only mean matching sets brightness
        registered = registered + _masked_band_mean(hr - registered, mask[:, None].to(sr.dtype))
    if cfg.mean_match_weight > 0:
        terms["mean_match"] = mean_match(sr, batch["lr"], batch["lr_mask"], lr_to_hr, cfg.mean_match_delta)
        total = total + cfg.mean_match_weight * terms["mean_match"]
    if cfg.perceptual_weight > 0 and delineation is not None:
        with low_precision(sr, amp):
            terms["perceptual"] = perceptual(delineation, registered, hr, cfg.style_weight).float()
        total = total + cfg.perceptual_weight * terms["perceptual"]
    if cfg.ssim_weight > 0:
        border = cfg.crop_border_px
        terms["ssim"] = 1 - ssim(crop(registered, border), crop(hr, border), crop(mask, border))
        total = total + cfg.ssim_weight * terms["ssim"]
    return total, {k: v.detach() for k, v in terms.items()}

"""The LR-to-label map: per-band (gain, offset) taking S2-scaled values to label-scaled ones (mean matching, the
consistency constraint, evaluation's baselines)."""

from __future__ import annotations

import torch

from srpipe.data.normalise import BandScale


def lr_to_hr_map(lr_scale: BandScale, hr_scale: BandScale, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(gain, offset) per band that map LR-scaled values to label-scaled ones (for mean matching)."""
    span = hr_scale.high - hr_scale.low
    gain, offset = (lr_scale.high - lr_scale.low) / span, (lr_scale.low - hr_scale.low) / span
    return torch.from_numpy(gain).float().to(device), torch.from_numpy(offset).float().to(device)

"""Perceptual distances in the field-delineation net: per-sample feature and style (Gram) distances to the label.

The evaluation twin of the training loss `srpipe.training.losses.perceptual`: the same encoder levels
(`DelineationNet.features`) and the
same Gram matrices (`srpipe.training.losses.gram_matrix`), one value per sample, optionally
on clear pixels only, and the net in eval mode so that BatchNorm does not mix the samples of a batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from srpipe.models.delineation import DelineationNet
from srpipe.training.losses import gram_matrix


def _level_masks(mask: torch.Tensor, features: list[torch.Tensor]) -> list[torch.Tensor]:
    """(B, H, W) bool -> per level (B, 1, h_i, w_i) float {0, 1}: positions whose 2**i x 2**i block is mostly clear."""
    m = mask[:, None].float()
    return [(F.avg_pool2d(m, 2**i) > 0.5).float() if i else m for i in range(len(features))]


@torch.no_grad()
def perceptual_distances(
    net: DelineationNet, image: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, np.ndarray]:
    """(B,) "feature" and "style" distances of (B, 4, H, W) `image` to `hr` in `net`'s encoder, label units.

    feature = mean over levels of the MSE of the activations; style = mean over levels of the MSE of their Gram
    matrices (C_i x C_i, normalised by the positions). With `mask` (B, H, W) bool (True = clear), masked-out pixels of
    `image` are replaced by the label's and only positions whose block is mostly clear count (Gram matrices over
    them; NaN for a sample where some level has none); without it, feature + style averaged over the batch is
    `srpipe.training.losses.perceptual` (style_weight 1).
    """
    if image.shape != hr.shape:
        raise ValueError(f"image {tuple(image.shape)} and label {tuple(hr.shape)} differ in shape")
    device = next(net.parameters()).device
    image, hr = image.to(device, torch.float32), hr.to(device, torch.float32)
    if mask is not None:
        mask = mask.to(device, torch.bool)
        image = torch.where(mask[:, None], image, hr)
    was_training = net.training
    net.eval()
    try:
        both = net.features(torch.cat([image, hr]))
    finally:
        net.train(was_training)
    b = image.shape[0]
    pairs = [(f[:b], f[b:]) for f in both]
    weights = _level_masks(mask, [f for f, _ in pairs]) if mask is not None else [None] * len(pairs)
    feature = torch.zeros(b, device=device)
    style = torch.zeros(b, device=device)
    for (f_img, f_hr), w in zip(pairs, weights, strict=True):
        if w is None:
            feature += ((f_img - f_hr) ** 2).mean((1, 2, 3))
            style += ((gram_matrix(f_img) - gram_matrix(f_hr)) ** 2).mean((1, 2))
            continue
        count = w.sum((1, 2, 3))
        none = torch.where(count > 0, 0.0, float("nan"))  # a level without clear positions: no distance
        feature += ((f_img - f_hr) ** 2 * w).sum((1, 2, 3)) / (count * f_img.shape[1]).clamp_min(1) + none
        # gram_matrix divides by every position: rescale to the clear ones
        scale = (w[0].numel() / count.clamp_min(1))[:, None, None]
        style += ((gram_matrix(f_img * w) - gram_matrix(f_hr * w)) * scale).pow(2).mean((1, 2)) + none
    n = len(pairs)
    return {"feature": (feature / n).cpu().numpy(), "style": (style / n).cpu().numpy()}

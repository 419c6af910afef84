"""Perceptual distances: zero at the label, growing with blur, per sample, masked, and the training loss's twin."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from srpipe.evaluation.perceptual import perceptual_distances
from srpipe.models.delineation import DelineationNet
from srpipe.training.losses import perceptual


def net() -> DelineationNet:
    """A small seeded delineation net (untrained: its random features still see edges and texture)."""
    torch.manual_seed(0)
    return DelineationNet(bands=4, channels=8, depth=3)


def label(b: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(b, 4, size, size) images with smooth structure and fine detail, in about [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(b, 4, size // 8, size // 8, generator=g), size=(size, size), mode="bicubic")
    return (0.2 + 0.5 * coarse + 0.15 * torch.rand(b, 4, size, size, generator=g)).clamp(0, 1)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, C, H, W) with `sigma` px, reflected borders."""
    r = int(3 * sigma) + 1
    k = torch.exp(-(torch.arange(-r, r + 1.0) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def test_the_label_is_at_distance_zero_from_itself():
    hr = label()
    out = perceptual_distances(net(), hr, hr)
    assert out["feature"].shape == (3,) and out["style"].shape == (3,)
    assert np.allclose(out["feature"], 0, atol=1e-12) and np.allclose(out["style"], 0, atol=1e-12)


def test_both_distances_grow_with_blur():
    model, hr = net(), label()
    feature, style = [], []
    for sigma in (0.5, 1.0, 2.0):
        out = perceptual_distances(model, blur(hr, sigma), hr)
        feature.append(out["feature"])
        style.append(out["style"])
    assert (np.diff(np.stack(feature), axis=0) > 0).all()
    assert (np.diff(np.stack(style), axis=0) > 0).all()


def test_without_mask_the_batch_mean_is_the_training_perceptual_loss():
    model, hr = net(), label()
    image = blur(hr, 1.0)
    out = perceptual_distances(model, image, hr)
    model.eval()
    with torch.no_grad():
        loss = perceptual(model, image, hr, style_weight=1.0)
    assert out["feature"].mean() + out["style"].mean() == pytest.approx(float(loss), rel=1e-4)


def test_samples_do_not_mix_and_the_nets_mode_is_restored():
    model, hr = net(), label()
    image = blur(hr, 1.0)
    model.train()
    batch = perceptual_distances(model, image, hr)
    alone = perceptual_distances(model, image[1:2], hr[1:2])
    assert model.training  # BatchNorm ran in eval mode, then the caller's mode came back
    assert batch["feature"][1] == pytest.approx(alone["feature"][0], rel=1e-5)


def test_differences_under_the_mask_do_not_count():
    model, hr = net(), label(b=2)
    image = hr.clone()
    image[..., :16] = torch.rand(2, 4, 32, 16, generator=torch.Generator().manual_seed(5))  # noise on the left half
    mask = torch.ones(2, 32, 32, dtype=torch.bool)
    plain = perceptual_distances(model, image, hr, mask)
    mask[..., :16] = False
    masked = perceptual_distances(model, image, hr, mask)
    assert (masked["feature"] == 0).all() and (masked["style"] == 0).all()  # the label fills masked pixels
    assert (plain["feature"] > 0).all()
    none = perceptual_distances(model, image, hr, torch.zeros_like(mask))
    assert np.isnan(none["feature"]).all()

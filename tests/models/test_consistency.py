"""The consistency constraint at HighRes-Net's output: D of the constrained SR equals the reference S2 frame on its
clear pixels, nothing leaks from cloudy or padded frames, and the numbers the config documents hold."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from srpipe.config import ModelConfig
from srpipe.evaluation.s2_consistency import degrade as scipy_degrade
from srpipe.models.consistency import constrain, degrade, degrade_adjoint, latest_frame, match_means, noise_gain
from srpipe.models.highresnet import HighResNet

SCALE, SIGMA = 4, 2.0  # the sample's PSF: 0.5 S2 px at scale 4
EXACT = 1e-5  # float32 SR, float64 inside: D(constrained SR) - reference on clear pixels


def _images(seed: int, b: int = 2, h: int = 12, w: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sr = torch.rand(b, 4, SCALE * h, SCALE * w, generator=g)
    reference = torch.rand(b, 4, h, w, generator=g)
    clear = torch.rand(b, h, w, generator=g) > 0.3
    return sr, reference, clear


def test_degrade_equals_the_scipy_chain_the_sample_and_the_scores_use():
    sr, _, _ = _images(0)
    ours = degrade(sr, SCALE, SIGMA).numpy()
    np.testing.assert_allclose(ours, scipy_degrade(sr.numpy(), SCALE, SIGMA), atol=1e-6)


def test_exact_constraint_reproduces_the_reference_on_clear_pixels_and_leaves_cloudy_ones():
    sr, reference, clear = _images(1)
    out = constrain(sr, reference, clear, SCALE, SIGMA, regularisation=0.0)
    low, before = degrade(out, SCALE, SIGMA), degrade(sr, SCALE, SIGMA)
    on_clear = clear[:, None].expand_as(low)
    assert (low - reference)[on_clear].abs().max() < EXACT
    assert (low - before)[~on_clear].abs().max() < EXACT  # cloudy pixels: SR's own, not the reference's
    assert (out - sr).abs().max() > 0.1  # it did change SR


def test_regularised_constraint_is_exact_at_zero_frequency_and_close_at_low_frequencies():
    sr, _, _ = _images(2, h=16, w=16)
    clear = torch.ones(2, 16, 16, dtype=torch.bool)
    rows = torch.cos(torch.pi * (torch.arange(16) + 0.5) / 16)[:, None]  # the lowest cosine the image holds
    offset = torch.tensor([0.02, -0.01, 0.03, 0.0])[:, None, None]
    reference = degrade(sr, SCALE, SIGMA) + offset + 0.1 * rows
    out = constrain(sr, reference, clear, SCALE, SIGMA, regularisation=0.3)
    gap = degrade(out, SCALE, SIGMA) - reference
    assert gap.mean((-2, -1)).abs().max() < EXACT  # no bias in any band
    assert gap.abs().max() < 0.02 * 0.1  # 1/32 cycle/px: within 2 %


def test_cloudy_reference_pixels_never_reach_sr():
    sr, reference, clear = _images(3)
    garbage = torch.where(clear[:, None], reference, torch.full_like(reference, 1e3))
    for mu in (0.0, 0.3):
        a = constrain(sr, reference, clear, SCALE, SIGMA, mu)
        b = constrain(sr, garbage, clear, SCALE, SIGMA, mu)
        assert torch.equal(a, b)


def test_nothing_changes_where_the_reference_has_no_clear_pixel():
    sr, reference, _ = _images(4)
    out = constrain(sr, reference, torch.zeros(2, 12, 10, dtype=torch.bool), SCALE, SIGMA, 0.3)
    assert (out - sr).abs().max() < 1e-6


@pytest.mark.parametrize(("mu", "gain"), [(0.0, 4.3), (0.3, 1.0)])
def test_noise_gain_is_what_the_config_comment_says(mu, gain):
    assert noise_gain(64, 64, SCALE, SIGMA, mu) == pytest.approx(gain, abs=0.05)
    residual = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    out = constrain(torch.zeros(1, 4, 128, 128), residual, torch.ones(1, 32, 32, dtype=torch.bool), SCALE, SIGMA, mu)
    assert out.std().item() == pytest.approx(gain, rel=0.15)


@pytest.mark.parametrize(("height", "width"), [(32, 32), (24, 40)])
def test_the_adjoint_of_the_degradation_is_exact(height, width):
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, height, width, dtype=torch.float64, generator=generator)
    w = torch.rand(2, 3, height // SCALE, width // SCALE, dtype=torch.float64, generator=generator)
    forward = (degrade(x, SCALE, SIGMA) * w).sum().item()
    adjoint = (x * degrade_adjoint(w, height, width, SCALE, SIGMA)).sum().item()
    assert forward == pytest.approx(adjoint, rel=1e-12)  # <D x, w> = <x, D^T w>


def test_mean_matching_removes_each_bands_bias_on_clear_pixels_and_nothing_else():
    sr, reference, clear = _images(8)
    out = match_means(sr, reference, clear, SCALE, SIGMA)
    gap = degrade(out, SCALE, SIGMA) - reference
    weight = clear[:, None].float()
    assert ((gap * weight).sum((-2, -1)) / weight.sum((-2, -1))).abs().max() < EXACT
    shift = out - sr  # one constant per sample and band
    assert (shift - shift.mean((-2, -1), keepdim=True)).abs().max() < 1e-6
    garbage = torch.where(clear[:, None], reference, torch.full_like(reference, 1e3))
    assert torch.equal(out, match_means(sr, garbage, clear, SCALE, SIGMA))


@torch.no_grad()
def test_model_modes_off_mean_full_change_only_what_they_say():
    lr, mask = _stack(9)
    off, mean, full = (_model(mode)(lr, mask) for mode in ("off", "mean", "full"))
    frame, clear = latest_frame(lr, mask)
    net = _model("off")
    reference = frame * net.lr_gain[:, None, None] + net.lr_offset[:, None, None]
    shift = mean - off
    assert (shift - shift.mean((-2, -1), keepdim=True)).abs().max() < 1e-6 and shift.abs().max() > 1e-3
    low = degrade(full, SCALE, SIGMA)
    assert (low - reference)[clear[:, None].expand_as(low)].abs().max() < EXACT


def test_constraint_is_differentiable():
    sr, reference, clear = _images(5)
    sr.requires_grad_(True)
    constrain(sr, reference, clear, SCALE, SIGMA, 0.3).square().sum().backward()
    assert sr.grad is not None and torch.isfinite(sr.grad).all()


def _model(consistency: str, mu: float = 0.0) -> HighResNet:
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        ModelConfig(), channels=8, encoder_layers=1, consistency=consistency, consistency_regularisation=mu
    )
    net = HighResNet(cfg, scale=SCALE).eval()
    return net.set_lr_to_hr(torch.tensor([0.9, 1.1, 1.0, 0.8]), torch.tensor([0.01, -0.02, 0.0, 0.05]))


def _stack(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 4, 4, 8, 8) frames, the last one padded (all masked, garbage values), the third partly cloudy."""
    g = torch.Generator().manual_seed(seed)
    lr = torch.rand(1, 4, 4, 8, 8, generator=g)
    mask = torch.ones(1, 4, 8, 8, dtype=torch.bool)
    mask[0, 2, :3] = False
    mask[0, 3] = False
    lr[0, 3] = 7.0
    return lr, mask


@torch.no_grad()
def test_model_output_reproduces_the_latest_clear_frame_in_label_units():
    net = _model("full")
    lr, mask = _stack(6)
    sr = net(lr, mask)
    frame, clear = latest_frame(lr, mask)
    assert torch.equal(frame, lr[:, 2])  # the padded frame is not the latest
    reference = frame * net.lr_gain[:, None, None] + net.lr_offset[:, None, None]
    low = degrade(sr, SCALE, SIGMA)
    on_clear = clear[:, None].expand_as(low)
    assert (low - reference)[on_clear].abs().max() < EXACT
    assert (low - reference)[~on_clear].abs().max() > 1e-3  # cloudy rows are left to the network


@torch.no_grad()
def test_padded_frames_do_not_leak_into_the_constrained_model():
    net = _model("full", 0.3)
    lr, mask = _stack(7)
    other = lr.clone()
    other[0, 3] = -5.0  # the padded frame: all masked
    assert torch.equal(net(lr, mask), net(other, mask))

"""Losses: registration at the loss, brightness correction, gradients of every term into HighRes-Net, cPSNR."""

import pytest
import torch
import torch.nn.functional as F

from srpipe.config import LossConfig, ModelConfig
from srpipe.metrics import cpsnr
from srpipe.models import build_model
from srpipe.models.delineation import DelineationNet
from srpipe.models.lanczos import lanczos_shift
from srpipe.models.shiftnet import ShiftNet
from srpipe.training.losses import (
    as_trained,
    latest_frame,
    mean_match,
    perceptual,
    pixel_loss,
    shift_regulariser,
    sr_losses,
    ssim,
)


def smooth(b: int = 2, c: int = 4, size: int = 48, seed: int = 0) -> torch.Tensor:
    """(b, c, size, size) smooth random images in about [0.2, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(b, c, size // 8, size // 8, generator=g), size=(size, size), mode="bicubic")
    return 0.2 + 0.6 * x.clamp(0, 1)


class _OracleShift:
    """Stands in for ShiftNet with the true shifts, to test the loss apart from learning."""

    def __init__(self, shifts: torch.Tensor) -> None:
        self.shifts = shifts

    def __call__(self, sr: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.shifts

    def register(self, sr: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lanczos_shift(sr, self.shifts), self.shifts


def test_registered_loss_of_a_shifted_label_is_near_zero_while_the_plain_loss_is_not():
    hr = smooth()
    shifts = torch.tensor([[1.5, -0.5], [-2.25, 1.0]])
    sr = lanczos_shift(hr, -shifts)  # the label seen through a sub-pixel misregistration
    mask = torch.ones(2, 48, 48, dtype=torch.bool)
    plain = pixel_loss(sr, hr, mask, border=8)
    registered = pixel_loss(_OracleShift(shifts).register(sr, hr)[0], hr, mask, border=8)
    assert registered < 1e-5 < plain / 10


def test_brightness_correction_ignores_a_constant_bias_per_band():
    hr, mask = smooth(), torch.ones(2, 48, 48, dtype=torch.bool)
    biased = hr + torch.tensor([0.1, -0.05, 0.0, 0.2])[None, :, None, None]
    assert pixel_loss(biased, hr, mask, brightness=True) < 1e-10 < pixel_loss(biased, hr, mask, brightness=False)


def test_shift_regulariser_is_the_mean_l2_norm():
    assert shift_regulariser(torch.tensor([[3.0, 4.0], [0.0, 0.0]])).item() == pytest.approx(2.5)


def test_latest_frame_is_the_last_one_with_clear_pixels():
    lr = torch.arange(4.0)[None, :, None, None, None].expand(1, 4, 4, 2, 2)
    mask = torch.ones(1, 4, 2, 2, dtype=torch.bool)
    mask[0, 3] = False  # padding at the end of the chronological stack
    frame, _ = latest_frame(lr, mask)
    assert frame.unique().tolist() == [2.0]


def _batch(k: int = 3) -> dict[str, torch.Tensor]:
    hr = smooth(2, 4, 32)
    lr = F.avg_pool2d(hr, 4)[:, None].expand(-1, k, -1, -1, -1).contiguous()
    return {
        "lr": lr,
        "lr_mask": torch.ones(2, k, 8, 8, dtype=torch.bool),
        "hr": hr,
        "hr_mask": torch.ones(2, 32, 32, dtype=torch.bool),
    }


def _grad_norm(model: torch.nn.Module, prefix: str) -> float:
    return sum(
        p.grad.abs().sum().item() for n, p in model.named_parameters() if n.startswith(prefix) and p.grad is not None
    )


def test_mean_matching_and_perceptual_terms_send_gradient_into_highresnet():
    torch.manual_seed(0)
    batch = _batch()
    identity = (torch.ones(4), torch.zeros(4))
    delineation = DelineationNet(channels=4, depth=2).eval().requires_grad_(False)
    for term in ("mean_match", "perceptual"):
        # the mean term is for a model without the mean constraint (which zeroes its slope by construction)
        consistency = "off" if term == "mean_match" else "mean"
        model = build_model(ModelConfig(channels=8, encoder_layers=1, consistency=consistency), scale=4)
        sr = model(batch["lr"], batch["lr_mask"]) + 0.05  # away from the optimum so the mean term has a slope
        if term == "mean_match":
            loss = mean_match(sr, batch["lr"], batch["lr_mask"], identity)
        else:
            loss = perceptual(delineation, sr, batch["hr"])
        loss.backward()
        assert _grad_norm(model, "encoder.") > 0 and _grad_norm(model, "decoder.") > 0, term
    assert all(p.grad is None for p in delineation.parameters())  # the delineation net stays frozen


def test_sr_losses_logs_every_term_and_weights_them():
    torch.manual_seed(0)
    batch = _batch()
    sr = batch["hr"] + 0.01
    cfg = LossConfig(crop_border_px=4, ssim_weight=0.5)
    delineation = DelineationNet(channels=4, depth=2).eval().requires_grad_(False)
    total, terms = sr_losses(
        cfg, sr, batch, _OracleShift(torch.zeros(2, 2)), delineation, (torch.ones(4), torch.zeros(4))
    )
    assert set(terms) == {"pixel", "shift_reg", "mean_match", "perceptual", "ssim"}
    weighted = terms["pixel"] + 0.001 * terms["shift_reg"] + 10 * terms["mean_match"]
    weighted = weighted + 0.05 * terms["perceptual"] + 0.5 * terms["ssim"]
    assert total.item() == pytest.approx(weighted.item(), rel=1e-5)
    assert terms["mean_match"].item() == pytest.approx(0.01, rel=1e-3)


def test_cpsnr_registers_integer_shifts_and_brightness_but_plain_scores_do_not():
    hr, mask = smooth(), torch.ones(2, 48, 48, dtype=torch.bool)
    moved = torch.roll(hr, (2, -3), (2, 3)) + 0.05
    assert (cpsnr(moved, hr, mask, max_shift=3) > 60).all()
    assert (cpsnr(moved, hr, mask, max_shift=1) < 40).all()


def test_ssim_of_an_image_with_itself_is_one():
    hr = smooth()
    assert ssim(hr, hr).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(hr + 0.1 * torch.rand_like(hr), hr).item() < 0.99


def test_huber_mean_matching_is_l1_far_from_the_target_and_fades_near_it():
    batch = _batch()
    identity = (torch.ones(4), torch.zeros(4))
    far, near = batch["hr"] + 0.1, (batch["hr"] + 0.001).requires_grad_()
    l1 = mean_match(far, batch["lr"], batch["lr_mask"], identity)
    huber = mean_match(far, batch["lr"], batch["lr_mask"], identity, delta=0.02)
    assert huber.item() == pytest.approx(l1.item() - 0.01, abs=1e-6)
    mean_match(near, batch["lr"], batch["lr_mask"], identity, delta=0.02).backward()
    fading = near.grad.abs().sum().item()
    near.grad = None
    mean_match(near, batch["lr"], batch["lr_mask"], identity).backward()
    assert fading < near.grad.abs().sum().item() / 10  # L1 pulls as hard at 0.001 as at 0.1; Huber barely


def test_shiftnet_learns_from_the_pixel_loss_alone_while_perceptual_and_ssim_still_reach_sr():
    torch.manual_seed(0)
    batch = _batch()
    shiftnet = ShiftNet(channels=8).eval()  # no dropout: both passes see the same network
    torch.nn.init.normal_(shiftnet.out.weight, std=0.1)  # a non-zero shift, so registration has a slope
    delineation = DelineationNet(channels=4, depth=2).eval().requires_grad_(False)
    identity = (torch.ones(4), torch.zeros(4))
    grads = {}
    for name, extra in (("pixel", 0.0), ("with_extras", 1.0)):
        shiftnet.zero_grad()
        sr = (batch["hr"] + 0.05 * torch.rand_like(batch["hr"])).requires_grad_()
        cfg = LossConfig(crop_border_px=4, mean_match_weight=0, perceptual_weight=extra, ssim_weight=extra)
        sr_losses(cfg, sr, batch, shiftnet, delineation, identity)[0].backward()
        grads[name] = (torch.cat([p.grad.flatten() for p in shiftnet.parameters()]), sr.grad)
    torch.testing.assert_close(grads["pixel"][0], grads["with_extras"][0])
    assert grads["pixel"][0].abs().sum() > 0 and not torch.allclose(grads["pixel"][1], grads["with_extras"][1])


def test_a_constrained_model_trains_without_the_mean_term_which_its_constraint_makes_moot():
    loss = LossConfig(mean_match_weight=10.0)
    assert as_trained(loss, "off") == loss
    assert [as_trained(loss, mode).mean_match_weight for mode in ("mean", "full")] == [0.0, 0.0]

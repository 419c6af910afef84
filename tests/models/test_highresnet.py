"""HighRes-Net: shapes, gradients and the handling of missing frames."""

import pytest
import torch

from srpipe.config import ModelConfig
from srpipe.models import build_model
from srpipe.models.highresnet import masked_median


@pytest.mark.parametrize("consistency", ["off", "mean", "full"])
@pytest.mark.parametrize("k", [1, 2, 3, 8])
@pytest.mark.parametrize("upscaler", ["pixel_shuffle", "transposed"])
def test_output_is_4x_and_every_trained_parameter_gets_gradient(k, upscaler, consistency):
    torch.manual_seed(0)
    cfg = ModelConfig(channels=8, encoder_layers=1, upscaler=upscaler, consistency=consistency)
    model = build_model(cfg, scale=4)
    lr = torch.rand(2, k, 4, 8, 8)
    mask = torch.ones(2, k, 8, 8, dtype=torch.bool)
    out = model(lr, mask)
    assert out.shape == (2, 4, 32, 32)
    (out * torch.rand_like(out)).sum().backward()  # a loss that is not constant under mean matching
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    last = f"decoder.net.{len(model.decoder.net) - 1}.bias"
    assert frozen == ([last] if consistency == "mean" else [])  # mean matching cancels it
    missing = [n for n, p in model.named_parameters() if p.requires_grad and not (p.grad is not None and p.grad.any())]
    if k == 1:  # one frame: nothing to fuse
        missing = [n for n in missing if not n.startswith("fusion.")]
    assert missing == []


def test_a_dead_frame_does_not_change_the_output_whatever_it_holds():
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=8, encoder_layers=1), scale=4).eval()
    lr = torch.rand(1, 3, 4, 8, 8)
    mask = torch.ones(1, 3, 8, 8, dtype=torch.bool)
    mask[:, 2] = False
    garbage = lr.clone()
    garbage[:, 2] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(model(lr, mask), model(garbage, mask))


def test_masked_median_skips_cloudy_pixels():
    lr = torch.stack([torch.full((4, 2, 2), v) for v in (0.1, 0.2, 0.9)])[None]
    mask = torch.ones(1, 3, 2, 2, dtype=torch.bool)
    mask[0, 2] = False  # the bright frame is cloud
    assert torch.allclose(masked_median(lr, mask), torch.full((1, 4, 2, 2), 0.1))

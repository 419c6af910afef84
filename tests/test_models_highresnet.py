"""HighRes-Net: shapes, gradients and the handling of missing frames."""

import pytest
import torch

from srpipe.config import ModelConfig
from srpipe.models import build_model
from srpipe.models.highresnet import masked_median


@pytest.mark.parametrize("k", range(1, 9))
@pytest.mark.parametrize("upscaler", ["pixel_shuffle", "transposed"])
def test_output_is_4x_and_every_parameter_gets_gradient(k, upscaler):
    torch.manual_seed(0)
    model = build_model(ModelConfig(channels=8, encoder_layers=1, upscaler=upscaler), scale=4)
    lr = torch.rand(2, k, 4, 8, 8)
    mask = torch.ones(2, k, 8, 8, dtype=torch.bool)
    out = model(lr, mask)
    assert out.shape == (2, 4, 32, 32)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
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

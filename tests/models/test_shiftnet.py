"""ShiftNet and the delineation net: shapes, the 'no shift' start, gradients."""

import torch

from srpipe.models.delineation import DelineationNet
from srpipe.models.shiftnet import ShiftNet


def test_shiftnet_starts_from_no_shift_and_its_shift_gets_gradient():
    net = ShiftNet(channels=8)
    sr, label = torch.rand(3, 4, 40, 40, requires_grad=True), torch.rand(3, 4, 40, 40)
    registered, shifts = net.register(sr, label)
    assert shifts.shape == (3, 2) and shifts.abs().max() == 0 and registered.shape == sr.shape
    registered.sum().backward()
    assert net.out.weight.grad is not None and sr.grad.abs().sum() > 0


def test_delineation_net_outputs_three_maps_and_one_feature_map_per_level():
    net = DelineationNet(bands=4, channels=4, depth=3)
    x = torch.rand(2, 4, 32, 32)
    out = net(x)
    assert out.shape == (2, 3, 32, 32) and 0 <= out[:, 2].min() and out[:, 2].max() <= 1
    assert [f.shape[-1] for f in net.features(x)] == [32, 16, 8]

"""Delineation targets from parcels (rasterised) and from the felzenszwalb proxy; a real parcel layer (Slovenia)."""

import json

import geopandas as gpd
import numpy as np
import torch
from rasterio.transform import from_bounds

from srpipe.config import DelineationConfig
from srpipe.models.delineation import DelineationNet
from srpipe.training.train_delineation import delineation_loss, proxy_segments, rasterise_parcels, segment_targets
from tests.conftest import DATA

SLOVENIA = DATA / "eolearn-slovenia"


def test_targets_of_two_squares_have_boundaries_extent_and_a_distance_peak_at_their_centres():
    seg = np.zeros((12, 24), np.int32)
    seg[1:10, 1:10], seg[1:10, 12:21] = 1, 2
    extent, boundary, distance = segment_targets(seg)
    assert boundary[1, 1:10].all() and not boundary[5, 5] and not boundary[0].any()
    assert extent[5, 5] and not extent[0, 0] and not (extent.astype(bool) & boundary.astype(bool)).any()
    assert distance[5, 5] == 1.0 and distance[5, 16] == 1.0 and distance[2, 2] < 0.5 and distance[0, 0] == 0


def test_proxy_segments_split_a_two_field_label_at_its_edge():
    label = np.zeros((4, 32, 32), np.float32)
    label[:, :, 16:] = 0.8
    seg = proxy_segments(label, DelineationConfig(felzenszwalb_min_size=10))
    assert seg.min() >= 1 and seg[:, :14].max() != seg[:, 18:].min()


def test_real_parcel_layer_rasterises_onto_the_scene_grid_and_trains_the_net():
    """The 88 real land-use polygons of the Slovenia fixture on its 10 m grid (101 x 100 px)."""
    ring = np.asarray(json.loads((SLOVENIA / "bbox.geojson").read_text())["coordinates"][0])
    (x0, y0), (x1, y1) = ring.min(0), ring.max(0)
    scenes = np.load(SLOVENIA / "REFERENCE_SCENES.npy")  # (5, 101, 100, 13)
    h, w = scenes.shape[1:3]
    transform = from_bounds(x0, y0, x1, y1, w, h)
    ids = rasterise_parcels(gpd.read_file(SLOVENIA / "LULC.gpkg").to_crs(32633), transform, (h, w))
    assert len(np.unique(ids[ids > 0])) >= 10  # many real parcels cover the footprint
    target = segment_targets(ids)
    assert 0.02 < target[1].mean() < 0.5 and target[0].mean() > 0.3
    image = torch.from_numpy(np.clip(scenes[0][..., [1, 2, 3, 7]].transpose(2, 0, 1) / 0.4, 0, 1)[None, :, :96, :96])
    y = torch.from_numpy(target[None, :, :96, :96])
    mask = torch.ones(1, 96, 96, dtype=torch.bool)
    torch.manual_seed(0)
    net = DelineationNet(channels=4, depth=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = delineation_loss(net(image.float()), y, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

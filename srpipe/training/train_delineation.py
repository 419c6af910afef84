"""`srpipe train-delineation`: train the field-delineation net on labels and parcel segments.

Targets per label pixel: extent (inside a parcel, off its boundary), boundary, distance to the boundary (normalised
to [0, 1] per parcel). Parcels come from a polygon layer (`delineation.parcels`, rasterised with rasterio.features
onto each tile's label grid) or, when there is none (the sample), from felzenszwalb segments of the cloud-free
labels - a proxy for parcels, not real field boundaries.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.features import rasterize
from rasterio.transform import from_bounds
from scipy import ndimage
from skimage.segmentation import felzenszwalb, find_boundaries

from srpipe import eopatch as ep
from srpipe import state
from srpipe.config import Config, DelineationConfig
from srpipe.data.grid import read_grid
from srpipe.data.normalise import load_stats, scales
from srpipe.data.shards import iter_samples, shard_paths
from srpipe.errors import StageError
from srpipe.models.delineation import DelineationNet


def delineation_dir(cfg: Config) -> Path:
    """Folder of the delineation model in the run directory."""
    return cfg.layout.model(cfg.delineation.name)


def segment_targets(segments: np.ndarray) -> np.ndarray:
    """(H, W) int parcel ids (0 = no parcel) -> (3, H, W) float32 extent, boundary, distance to boundary."""
    boundary = find_boundaries(segments, mode="inner")
    extent = (segments > 0) & ~boundary
    distance = ndimage.distance_transform_edt(extent)
    ids = np.unique(segments[extent]) if extent.any() else np.zeros(0, int)
    peak = np.zeros(int(segments.max()) + 1, np.float64)
    peak[ids] = ndimage.maximum(distance, labels=segments, index=ids)
    distance = np.where(extent, distance / np.maximum(peak[segments], 1), 0)
    return np.stack([extent, boundary, distance]).astype(np.float32)


def proxy_segments(label: np.ndarray, dcfg: DelineationConfig) -> np.ndarray:
    """(4, H, W) label in [0, 1] -> (H, W) felzenszwalb segment ids from 1 (the documented parcel proxy)."""
    rgb = np.clip(label[[2, 1, 0]].transpose(1, 2, 0), 0, 1)
    seg = felzenszwalb(
        rgb, scale=dcfg.felzenszwalb_scale, sigma=dcfg.felzenszwalb_sigma, min_size=dcfg.felzenszwalb_min_size
    )
    return seg.astype(np.int32) + 1


def rasterise_parcels(parcels: gpd.GeoDataFrame, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """Parcel polygons (already in the grid's CRS) -> (H, W) int32 ids from 1 on the grid, 0 outside parcels."""
    shapes = [(geom, i + 1) for i, geom in enumerate(parcels.geometry) if geom is not None and not geom.is_empty]
    if not shapes:
        return np.zeros(shape, np.int32)
    return rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="int32")


def _from_shards(cfg: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (N, 4, H, W), masks (N, H, W) and proxy targets (N, 3, H, W) from the training shards."""
    paths = shard_paths(cfg.layout.datasets, "train")
    if not paths:
        raise StageError(f"no training shards in {cfg.layout.datasets}; run `srpipe curate` first")
    images, masks = [], []
    for shard in iter_samples(paths):
        images.append(shard["hr"])
        masks.append(shard["hr_mask"])
    x, m = np.concatenate(images), np.concatenate(masks)
    pick = np.random.default_rng(cfg.delineation.seed).permutation(len(x))[: cfg.delineation.max_samples]
    x, m = x[pick], m[pick]
    y = np.stack([segment_targets(proxy_segments(img, cfg.delineation)) for img in x])
    return x, m, y


def _from_parcels(cfg: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label patches, masks and parcel targets cut from each tile's clearest label date, parcels rasterised on it."""
    _, hr_scale = scales(load_stats(cfg.run_path))
    parcels = gpd.read_file(cfg.delineation.parcels)
    size = cfg.curate.lr_patch_px * cfg.source.scale
    rng = np.random.default_rng(cfg.delineation.seed)
    xs, ms, ys = [], [], []
    for tile in read_grid(cfg.run_path):
        patch = ep.load_patch(cfg.run_path, tile.tile_id, cfg.source.scale)
        valid = patch[ep.VHR_VALID][..., 0]
        t = int(valid.reshape(len(valid), -1).mean(1).argmax())
        label = hr_scale.apply(patch[ep.VHR_BANDS][t], band_axis=-1).transpose(2, 0, 1)
        bbox = patch.bbox
        h, w = label.shape[1:]
        transform = from_bounds(bbox.min_x, bbox.min_y, bbox.max_x, bbox.max_y, w, h)
        ids = rasterise_parcels(parcels.to_crs(bbox.crs.epsg), transform, (h, w))
        target = segment_targets(ids)
        for _ in range(max(1, cfg.delineation.max_samples // 16)):
            r, c = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
            xs.append(label[:, r : r + size, c : c + size])
            ms.append(valid[t, r : r + size, c : c + size])
            ys.append(target[:, r : r + size, c : c + size])
    return np.stack(xs), np.stack(ms), np.stack(ys)


def delineation_loss(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked BCE on extent and boundary logits + MSE on distance: out, target (B, 3, H, W), mask (B, H, W)."""
    m = mask[:, None].to(out.dtype)
    bce = F.binary_cross_entropy_with_logits(out[:, :2], target[:, :2], reduction="none")
    err = torch.cat([bce, (out[:, 2:] - target[:, 2:]) ** 2], 1)
    return (err * m).sum() / (m.sum() * 3).clamp_min(1)


def train_delineation(cfg: Config) -> dict:
    """Train the delineation net; write models/<delineation.name>/model.pt and history.json."""
    d = cfg.delineation
    torch.manual_seed(d.seed)
    torch.set_flush_denormal(True)
    x, m, y = _from_parcels(cfg) if d.parcels else _from_shards(cfg)
    x, m, y = torch.from_numpy(x), torch.from_numpy(m), torch.from_numpy(y)
    net = DelineationNet(bands=x.shape[1], channels=d.channels, depth=d.depth)
    optimizer = torch.optim.Adam(net.parameters(), lr=d.lr)
    budget_s = d.max_minutes * 60 if d.max_minutes > 0 else math.inf
    start, history, epoch = time.perf_counter(), [], 0
    while epoch < d.epochs and time.perf_counter() - start < budget_s:
        order, losses = torch.randperm(len(x)), []
        for i in range(0, len(x), d.batch_size):
            idx = order[i : i + d.batch_size]
            loss = delineation_loss(net(x[idx]), y[idx], m[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if time.perf_counter() - start > budget_s:
                break
        epoch += 1
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - start})
    folder = delineation_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"model": net.state_dict(), "config": dataclasses.asdict(d), "bands": x.shape[1]}
    with state.atomic_path(folder / "model.pt") as tmp:
        state.save_torch(payload, tmp)
    state.write_json(folder / "history.json", history)
    source = "parcels" if d.parcels else "felzenszwalb proxy segments"
    print(f"train-delineation: {epoch} epochs on {len(x)} patches ({source}), loss {history[-1]['loss']:.4f}")
    return {"epochs": epoch, "samples": len(x), "loss": round(history[-1]["loss"], 5)}


def load_delineation(cfg: Config) -> DelineationNet | None:
    """The trained delineation net, frozen and in eval mode; None when it has not been trained."""
    path = delineation_dir(cfg) / "model.pt"
    if not path.exists():
        return None
    saved = torch.load(path, weights_only=False)
    net = DelineationNet(bands=saved["bands"], channels=saved["config"]["channels"], depth=saved["config"]["depth"])
    net.load_state_dict(saved["model"])
    return net.eval().requires_grad_(False)

"""Infer, one tile: the K most recent cloudless frames -> SR image as a georeferenced COG on the tile's label grid."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from rasterio.io import MemoryFile
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

from srpipe import BANDS
from srpipe import eopatch as ep
from srpipe.config import Config
from srpipe.curate.clouds import clear_frames, cloud_cover
from srpipe.errors import TileError
from srpipe.state import atomic_path
from srpipe.train import load_trained


def as_of_date(cfg: Config) -> dt.date:
    """The date a prediction stands for: `infer.date`, else the end of the source's time interval."""
    return dt.date.fromisoformat(cfg.infer.date or cfg.source.time_interval[1])


def prediction_path(cfg: Config, tile_id: str) -> Path:
    """`predictions/<model>/<tile_id>/<date>.tif`."""
    return cfg.run_path / "predictions" / cfg.train.name / tile_id / f"{as_of_date(cfg).isoformat()}.tif"


def label_transform(bounds: tuple[float, float, float, float], width: int, height: int) -> Affine:
    """Affine of a (height, width) grid covering `bounds` (minx, miny, maxx, maxy), north up."""
    minx, miny, maxx, maxy = bounds
    return Affine((maxx - minx) / width, 0, minx, 0, -(maxy - miny) / height, maxy)


def write_cog(path: Path, image: np.ndarray, transform: Affine, epsg: int, tags: dict, blocksize: int = 256) -> None:
    """Write (bands, H, W) float32 `image` as a deflate COG with overviews, atomically."""
    profile = {
        "driver": "GTiff",
        "dtype": "float32",
        "count": image.shape[0],
        "height": image.shape[1],
        "width": image.shape[2],
        "crs": f"EPSG:{epsg}",
        "transform": transform,
        "nodata": float("nan"),
    }
    cog = cog_profiles.get("deflate")
    cog.update(blockxsize=blocksize, blockysize=blocksize, predictor=3)
    with MemoryFile() as mem, atomic_path(path) as tmp:
        with mem.open(**profile) as dst:
            dst.write(image)
            dst.descriptions = BANDS[: image.shape[0]]
            dst.update_tags(**{k: str(v) for k, v in tags.items()})
        with mem.open() as src:
            cog_translate(src, str(tmp), cog, in_memory=True, quiet=True, overview_resampling="average")


def infer_tile(cfg: Config, tile_id: str) -> dict:
    """Super-resolve one tile with the trained model; write its COG; return the frames used."""
    patch = ep.load_patch(cfg.run_path, tile_id, cfg.source.scale)
    model = load_trained(cfg)
    s2, valid = patch[ep.S2_BANDS], patch[ep.S2_VALID][..., 0]
    clouds = patch[ep.S2_CLOUDS][..., 0]
    dates = [d.date() for d in patch.timestamps]
    until = as_of_date(cfg)
    usable = clear_frames(cloud_cover(clouds, valid), valid, cfg.infer.max_cloud_cover)
    usable &= np.array([d <= until for d in dates])
    picked = np.flatnonzero(usable)[-cfg.infer.n_frames :]
    if picked.size == 0:
        raise TileError(
            tile_id,
            f"no S2 frame on or before {until} has cloud cover <= infer.max_cloud_cover={cfg.infer.max_cloud_cover}; "
            "set infer.date later or raise the threshold",
        )
    k = model.n_frames
    lr = np.zeros((1, k, 4, *s2.shape[1:3]), np.float32)
    mask = np.zeros((1, k, *s2.shape[1:3]), bool)
    lr[0, : picked.size] = model.lr_scale.apply(s2[picked], band_axis=3).transpose(0, 3, 1, 2)
    mask[0, : picked.size] = ~clouds[picked] & valid[picked]
    sr = model.super_resolve(torch.from_numpy(lr), torch.from_numpy(mask), cfg.infer.self_ensemble)[0].numpy()
    image = model.hr_scale.invert(sr, band_axis=0)
    bbox = patch.bbox
    transform = label_transform(tuple(bbox), image.shape[2], image.shape[1])
    used = [dates[i].isoformat() for i in picked]
    write_cog(
        prediction_path(cfg, tile_id),
        image,
        transform,
        int(bbox.crs.epsg),
        {"tile_id": tile_id, "as_of": until.isoformat(), "frames": ",".join(used), "model": cfg.train.name},
    )
    return {"frames": used}

"""Infer, one tile: the K most recent cloudless frames -> SR image as a georeferenced COG on the tile's label grid."""

from __future__ import annotations

import numpy as np
import torch
from rasterio.transform import from_bounds

from srpipe import eopatch as ep
from srpipe.cog import write_cog
from srpipe.config import Config
from srpipe.curate.clouds import clear_frames, cloud_cover
from srpipe.errors import TileError
from srpipe.models.trained import load_trained


def infer_tile(cfg: Config, tile_id: str) -> dict:
    """Super-resolve one tile with the trained model; write its COG; return the frames used."""
    patch = ep.load_patch(cfg.run_path, tile_id, cfg.source.scale)
    model = load_trained(cfg)
    s2, valid = patch[ep.S2_BANDS], patch[ep.S2_VALID][..., 0]
    clouds = patch[ep.S2_CLOUDS][..., 0]
    dates = [d.date() for d in patch.timestamps]
    until = cfg.as_of_date
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
    used = [dates[i].isoformat() for i in picked]
    write_cog(
        cfg.layout.prediction(cfg.train.name, tile_id, until.isoformat()),
        image,
        from_bounds(*bbox, width=image.shape[2], height=image.shape[1]),
        int(bbox.crs.epsg),
        cfg.mosaic,
        {"tile_id": tile_id, "as_of": until.isoformat(), "frames": ",".join(used), "model": cfg.train.name},
    )
    return {"frames": used}

"""`srpipe adapt RUN`: the weights RUN infers with, fine-tuned on the region's own S2 by the Wald protocol.

No label is needed: the region's S2 at 10 m plays the label and S2 at 40 m is simulated from it as the sample source
does (blur, shift, area mean, radiometry, noise, planted clouds), in a run of its own, `RUN/scenes/<scene>/` (plan,
download, curate, the delineation net), where the weights train for `[adapt] max_minutes`; the result is
`RUN/models/adapted/model.pt`, which `infer.model` then names. The region's S2 is a folder the user gives (`--scene`)
or else a composite of the run's downloaded tiles: each tile core from its latest clear frame, in the UTM zone with
the most tiles (run `srpipe download` first; a native sample run's composite is its scene over the tile cores).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import rasterio
import tomli_w
from rasterio.transform import from_origin

from srpipe import BANDS, state
from srpipe import eopatch as ep
from srpipe.config import Config, SourceConfig, config_to_dict, load_config
from srpipe.data.clouds import clear_frames, cloud_cover
from srpipe.data.grid import Tile, read_grid
from srpipe.data.s2units import to_dn
from srpipe.errors import StageError

# curation of a Wald run (labels in reflectance, the sample's planted clouds): configs/demo.toml's settings
WALD_CURATE = {"vhr_cloud_threshold": 0.3, "lr_patch_px": 16, "noise_min_ssim": 0.3, "noise_min_psnr_db": 17.0,
               "noise_max_mse_ratio": 30.0}  # fmt: skip
WALD_SEASON = ("time_interval", "n_dates", "n_vhr_dates", "cloudy_date_fraction", "vhr_cloudy_dates")


def _latest_clear(patch, max_cover: float) -> int | None:
    """Index of the latest S2 frame of the patch that is complete and at most `max_cover` cloudy, or None."""
    clouds, valid = patch[ep.S2_CLOUDS][..., 0], patch[ep.S2_VALID][..., 0]
    usable = clear_frames(cloud_cover(clouds, valid), valid, max_cover)
    dates = list(patch.timestamps)
    picked = np.flatnonzero(usable).tolist()
    return max(picked, key=lambda i: dates[i]) if picked else None


def _centre(tile: Tile) -> tuple[float, float]:
    return (tile.core[0] + tile.core[2]) / 2, (tile.core[1] + tile.core[3]) / 2


def _nearest(tiles: list[Tile], n: int) -> list[Tile]:
    """The `n` tiles of the zone with the most tiles nearest that zone's tiles' centre (a compact block)."""
    epsg = max({t.epsg for t in tiles}, key=lambda e: sum(t.epsg == e for t in tiles))
    zone = [t for t in tiles if t.epsg == epsg]
    cx, cy = np.mean([_centre(t) for t in zone], axis=0)
    return sorted(zone, key=lambda t: (_centre(t)[0] - cx) ** 2 + (_centre(t)[1] - cy) ** 2)[:n]


def _paste(image: np.ndarray, frame: np.ndarray, box: tuple, tile: Tile, x0: float, y1: float, res: float) -> None:
    """Paste the part of (h, w, 4) `frame` (on the tile's buffered box) inside `box` into (4, H, W) DN `image`."""
    cx, cy = round((box[0] - tile.bounds[0]) / res), round((tile.bounds[3] - box[3]) / res)
    w, h = round((box[2] - box[0]) / res), round((box[3] - box[1]) / res)
    ox, oy = round((box[0] - x0) / res), round((y1 - box[3]) / res)
    image[:, oy : oy + h, ox : ox + w] = to_dn(np.moveaxis(frame[cy : cy + h, cx : cx + w], -1, 0))


def composite_scene(cfg: Config, folder: Path) -> Path:
    """`folder/B02.tif` ... `B08.tif` (uint16 DN) at S2 pixels: the whole boxes of up to `adapt.max_tiles` downloaded
    tiles (a compact block in the UTM zone with the most), each from its latest clear frame, cores over buffers; 0
    where no tile has one."""
    tiles = [t for t in read_grid(cfg.run_path) if ep.patch_dir(cfg.run_path, t.tile_id).exists()]
    if not tiles:
        raise StageError(f"run {cfg.run_path} has no downloaded tile; run `srpipe download {cfg.run_path}` first")
    tiles, res = _nearest(tiles, cfg.adapt.max_tiles), cfg.source.lr_resolution_m
    x0, y1 = min(t.bounds[0] for t in tiles), max(t.bounds[3] for t in tiles)
    width = round((max(t.bounds[2] for t in tiles) - x0) / res)
    height = round((y1 - min(t.bounds[1] for t in tiles)) / res)
    image = np.zeros((len(BANDS), height, width), np.uint16)
    frames = {}
    for tile in tiles:
        patch = ep.load_patch(cfg.run_path, tile.tile_id, cfg.source.scale)
        t = _latest_clear(patch, cfg.curate.s2_max_cloud_cover)
        if t is not None:
            frames[tile.tile_id] = patch[ep.S2_BANDS][t]
    for part in ("bounds", "core"):  # the buffers first, so that every tile's own core wins
        for tile in (t for t in tiles if t.tile_id in frames):
            _paste(image, frames[tile.tile_id], getattr(tile, part), tile, x0, y1, res)
    folder.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint16",
               "crs": f"EPSG:{tiles[0].epsg}", "transform": from_origin(x0, y1, res, res)}  # fmt: skip
    for band, values in zip(BANDS, image, strict=True):
        with rasterio.open(folder / f"{band}.tif", "w", **profile) as dst:
            dst.write(values, 1)
    return folder


def region_scene(cfg: Config, scene: Path | None) -> Path:
    """The S2 scene to adapt on: `scene`, else a composite of the run's downloaded tiles."""
    return scene if scene is not None else composite_scene(cfg, cfg.run_path / "adapt" / "composite")


def recipe_overrides(cfg: Config, weights: Path, has_labels: bool) -> dict:
    """Settings of the adaptation run that come from what made the weights: a packaged file's recipe (its JSON:
    model, loss), else RUN's own; Wald curation where RUN's source has no labels (`has_labels`: it has)."""
    overrides: dict = {"source": {"native": False}}
    record = weights.with_suffix(".json")
    if record.exists():
        recipe = json.loads(record.read_text())["recipe"]
        overrides |= {"model": recipe["model"], "loss": recipe["loss"]}
    if not has_labels:  # the region's S2 pixels become the label's; S2 is simulated at scale x them, over the
        # sample's season of dates (a run without labels may have one acquisition)
        season = {k: getattr(SourceConfig(), k) for k in WALD_SEASON}
        overrides |= {"curate": WALD_CURATE, "source": {"native": False, "lr_resolution_m": 0.0, **season}}
    return overrides


def install_adapted(cfg: Config, sub: Config, weights: Path, seconds: float) -> Path:
    """Copy the adaptation run's model to `RUN/models/adapted/model.pt` with `adapted.json` (what and how)."""
    target = cfg.layout.model("adapted")
    target.mkdir(parents=True, exist_ok=True)
    with state.atomic_path(target / "model.pt") as tmp:
        shutil.copy2(sub.layout.model(sub.train.name) / "model.pt", tmp)
    history = json.loads((sub.layout.model(sub.train.name) / "history.json").read_text())
    record = {"from_weights": str(weights), "scene": sub.source.scene, "adapt": vars(cfg.adapt),
              "seconds": round(seconds, 1), "last_epoch": history[-1] if history else None}  # fmt: skip
    state.write_json(target / "adapted.json", record)
    return target / "model.pt"


def adapt_config(sub: Config, weights: Path) -> Config:
    """The scene run's config for adaptation (`adapt.toml`): train from `weights` at `adapt.lr`, cosine over
    `adapt.max_minutes`."""
    settings = config_to_dict(sub)
    a = sub.adapt
    settings["train"] |= {"init_from": str(weights), "lr": a.lr, "epochs": a.epochs, "max_minutes": a.max_minutes,
                          "lr_schedule": "cosine"}  # fmt: skip
    path = sub.run_path / "adapt.toml"
    state.write_text(path, tomli_w.dumps({k: v for k, v in settings.items() if v is not None}))
    return load_config(path)


def train_adapted(sub: Config, weights: Path) -> tuple[Config, float]:
    """Fine-tune `weights` in the scene run `sub`, from them and not from an earlier adaptation's checkpoint (its
    model folder is emptied first); the adaptation's config and its seconds."""
    from srpipe.training.train import train

    adapted = adapt_config(sub, weights)
    shutil.rmtree(adapted.layout.model(adapted.train.name), ignore_errors=True)
    start = time.perf_counter()
    train(adapted)
    return adapted, time.perf_counter() - start

"""`srpipe evaluate RUN --scene DIR`: score RUN's trained model on a scene a user brings.

The scene (one acquisition's B02, B03, B04, B08 at the label resolution, as for `source.scene`) goes through the
sample source's simulation (S2 at `scale` x coarser, dates, clouds), then plan, download and curation (SCENE_CHAIN)
in a run of its own, `RUN/scenes/<name>/`, with RUN's settings (the cli drives them); RUN's model and delineation
net are copied in, and the whole evaluation runs on the scene's test tiles. Nothing is trained on the scene.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import tomli_w
from pyproj import Transformer

from srpipe.config import Config, config_to_dict, load_config
from srpipe.errors import ConfigError, StageError

SCENE_CHAIN = ("download", "curate", "curate-reduce")


def _aoi(cfg: Config, scene: Path, path: Path) -> Path:
    """GeoJSON of the scene's footprint, less one tile buffer inside each edge (whole tiles only), in EPSG:4326."""
    from srpipe.sources.sample.source import SampleSource

    source = SampleSource(cfg.source)
    b = source.scene_bounds
    margin = cfg.plan.tile_size_m * cfg.plan.tile_buffer + source.hr_res
    x0, y0, x1, y1 = b.left + margin, b.bottom + margin, b.right - margin, b.top - margin
    if x1 - x0 < cfg.plan.tile_size_m or y1 - y0 < cfg.plan.tile_size_m:
        raise ConfigError(f"scene {scene} is smaller than one buffered tile ({cfg.plan.tile_size_m:g} m + buffers)")
    to_wgs84 = Transformer.from_crs(source.crs, 4326, always_xy=True)
    ring = [list(to_wgs84.transform(x, y)) for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]
    polygon = {"type": "Polygon", "coordinates": [ring]}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"scene": str(scene)}, "geometry": polygon}]}))  # fmt: skip
    return path


def scene_config(cfg: Config, scene: Path, overrides: dict | None = None) -> Config:
    """The config of RUN/scenes/<name>/: RUN's settings (section by section `overrides` of them), the sample source
    on `scene`, an AOI over its footprint."""
    scene = scene.resolve()
    if not scene.is_dir():
        raise ConfigError(f"--scene {scene} is not a folder (it should hold B02, B03, B04, B08 as .jp2/.tif)")
    folder = cfg.run_path / "scenes" / scene.name
    folder.mkdir(parents=True, exist_ok=True)
    settings = config_to_dict(cfg)
    settings["run_dir"] = str(folder)
    settings["source"] = {**settings["source"], "name": "sample", "scene": str(scene)}
    settings["train"] = {**settings["train"], "init_from": ""}
    for section, values in (overrides or {}).items():
        settings[section] = {**settings[section], **values}
    probe = load_config_from(folder / "scene.toml", settings)
    settings["plan"] = {
        **settings["plan"],
        "aoi": str(_aoi(probe, scene, folder / "aoi.geojson")),
        "region": scene.name,
    }
    return load_config_from(folder / "scene.toml", settings)


def load_config_from(path: Path, settings: dict) -> Config:
    """Write `settings` to `path` and load it (validated like any config)."""
    path.write_text(tomli_w.dumps({k: v for k, v in settings.items() if v is not None}))
    return load_config(path)


def copy_models(cfg: Config, sub: Config) -> None:
    """RUN's trained model and delineation net (with their histories) into the scene's run: copies, not links (RUN
    may be retrained)."""
    if not (cfg.layout.model(cfg.train.name) / "model.pt").exists():
        raise StageError(f"RUN {cfg.run_path} has no trained model; run `srpipe train {cfg.run_path}` first")
    for name in (cfg.train.name, cfg.delineation.name):
        target = sub.layout.model(name)
        target.mkdir(parents=True, exist_ok=True)
        for file in ("model.pt", "history.json"):
            if (cfg.layout.model(name) / file).exists():
                shutil.copy2(cfg.layout.model(name) / file, target / file)


def set_aside_unadapted(sub: Config) -> Path:
    """Move the scene run's copy of RUN's model to `models/<name>.unadapted/` and its reports to
    `reports-unadapted/` (a previous adaptation's are replaced); the weights file to adapt from."""
    model, kept = sub.layout.model(sub.train.name), sub.layout.model(f"{sub.train.name}.unadapted")
    reports = sub.layout.reports.with_name("reports-unadapted")
    for source, target in ((model, kept), (sub.layout.reports, reports)):
        shutil.rmtree(target, ignore_errors=True)
        source.rename(target)
    return kept / "model.pt"


def adaptation_record(before: dict, after: dict, seconds: float, adapt: dict) -> dict:
    """RUN's model on the scene's test tiles before and after adaptation (metrics.json of each), side by side."""

    def row(metrics: dict) -> dict:
        base = metrics["strongest_baseline"]
        out = {"strongest_baseline": base, "baseline_cpsnr": metrics["baselines"][base]["cpsnr"]}
        for name in ("sr_one_pass", "sr"):
            m = metrics[name]
            out[name] = {k: m[k] for k in ("cpsnr", "cpsnr_gain", "cpsnr_gain_ci", "cpsnr_win_share", "kelvins")}
        return out

    return {"adapt": adapt, "seconds": round(seconds, 1), "n_samples": after["n_samples"],
            "unadapted": row(before), "adapted": row(after)}  # fmt: skip

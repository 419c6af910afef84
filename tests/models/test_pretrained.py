"""Pretrained weights: export, `train.init_from` (packaged name or path), shape checks, and honest data."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pytest
import torch

from srpipe.config import load_config
from srpipe.errors import StageError
from srpipe.models import build_model
from srpipe.models.calibration import Calibration
from srpipe.models.pretrained import export_weights, init_weights
from srpipe.models.shiftnet import ShiftNet
from srpipe.models.trained import load_model, model_dir
from srpipe.training.train import train
from srpipe.weights import WEIGHTS_DIR, packaged, weights_path

REPO = Path(__file__).resolve().parents[2]


def test_a_run_starts_from_exported_weights_and_a_wrong_shape_names_the_key(tmp_path, make_synthetic_run):
    source = make_synthetic_run(tmp_path / "source", epochs=1)
    train(source)
    folder = model_dir(source)
    out = export_weights(folder / "model.pt", folder / "checkpoint.pt", tmp_path / "w.pt", {"made_by": "test"})
    record = json.loads(out.with_suffix(".json").read_text())
    calibration = torch.load(folder / "model.pt", weights_only=False)["calibration"]  # train calibrated it on val
    assert record == {"made_by": "test", "calibration": calibration} and calibration["split"] == "val"
    assert load_model(out).calibration == Calibration.from_json(calibration)  # it travels with the weights
    cfg = dataclasses.replace(source, train=dataclasses.replace(source.train, init_from=str(out)))
    model, shiftnet = build_model(cfg.model, 4), ShiftNet(cfg.model.shiftnet_channels, cfg.model.shiftnet_pool)
    assert init_weights(cfg, model, shiftnet) == out
    trained = torch.load(folder / "model.pt", weights_only=False)["model"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[key], atol=2e-3, rtol=2e-3)  # stored as float16
    wide = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, channels=16))
    with pytest.raises(StageError, match=r"model.channels = 16 \(the weights have 8\)"):
        init_weights(wide, build_model(wide.model, 4), shiftnet)
    with pytest.raises(StageError, match="neither a packaged weights name"):
        weights_path("no-such-weights")


def test_init_from_is_resolved_against_the_config_file_and_fingerprinted(tmp_path, make_synthetic_run):
    cfg = make_synthetic_run(tmp_path / "run", epochs=1, init_from="weights/w.pt")
    assert cfg.train.init_from == str((tmp_path / "run" / "weights" / "w.pt").resolve())
    from srpipe.chain import STAGES, ChainState

    (tmp_path / "run" / "weights").mkdir()
    (tmp_path / "run" / "weights" / "w.pt").write_bytes(b"one")
    first = ChainState(cfg).inputs(STAGES["train"], "all")
    (tmp_path / "run" / "weights" / "w.pt").write_bytes(b"two")
    assert ChainState(cfg).inputs(STAGES["train"], "all")["files"] != first["files"]


def _grid(config: Path, run_dir: Path) -> gpd.GeoDataFrame:
    subprocess.run([sys.executable, "-m", "srpipe", "plan", str(config), "--run-dir", str(run_dir)], check=True,
                   capture_output=True)  # fmt: skip
    return gpd.read_file(run_dir / "grid.gpkg")


def test_the_pretraining_tiles_never_touch_a_demo_tile(tmp_path):
    pretrain, demo = (
        _grid(REPO / "configs/pretrain.toml", tmp_path / "p"),
        _grid(REPO / "configs/demo.toml", tmp_path / "d"),
    )
    assert len(pretrain) >= 20 and len(demo) == 16
    # buffered boxes (what a tile's samples are cut from) of the two never intersect, not even at an edge
    assert not pretrain.geometry.unary_union.intersects(demo.geometry.unary_union)
    cfg = load_config(REPO / "configs/demo.toml")
    assert "sample-x4" in packaged(), f"no packaged weights sample-x4 in {WEIGHTS_DIR}: run `make pretrain`"
    record = json.loads((WEIGHTS_DIR / "sample-x4.json").read_text())
    assert record["data"]["aoi"] == "pretrain_aoi.geojson" and cfg.train.init_from == "sample-x4"

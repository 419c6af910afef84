"""Fixtures for the `sentinelhub` source: the local server, a sentinelhub-py profile pointing at it, tiny configs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import shapely
import tomli_w
from pyproj import Transformer

from tests.conftest import aoi_geojson, tiny_settings, write_config
from tests.shserver import Dataset, Scene, SentinelHubTestServer

SECRET = "S3cr3t-srpipe-7f1e9b2c-NEVER-WRITE-ME"  # grepped for in run directories and logs
CLIENT_ID = "srpipe-test-client"
PROFILE = "srpipe-local"
BYOC_ID = "0b9b2b6e-3c1a-4d5e-9f00-d2d05b1e5e1a"
LABEL_GAIN = 1e-4  # the label's DN -> reflectance-like units, so the tiny chain's thresholds fit
_SCENE: list[Scene] = []


def server_dataset() -> Dataset:
    """18 S2 passes May-October 2022 (every 10 days; some cloudy, one over maxcc) and 2 labels in Aug/Sep."""
    start = dt.datetime(2022, 5, 3, 15, 50, 12)
    covers = [0, 0, 35, 0, 0, 95, 0, 20, 0, 0, 0, 40, 0, 0, 0, 10, 0, 0]
    s2 = [(start + dt.timedelta(days=10 * i), float(c)) for i, c in enumerate(covers)]
    labels = [dt.datetime(2022, 8, 14, 10, 30), dt.datetime(2022, 9, 21, 10, 40)]
    to_wgs = Transformer.from_crs(32618, 4326, always_xy=True)
    west = shapely.box(435730, 4159990, 449000, 4179460)  # the label covers the scene's western 13 km only
    footprint = shapely.Polygon([to_wgs.transform(x, y) for x, y in west.exterior.coords])
    return Dataset(s2_dates=s2, byoc_id=BYOC_ID, byoc_dates=labels, byoc_footprint=footprint)


@pytest.fixture(scope="session")
def sh_server() -> Iterator[SentinelHubTestServer]:
    """The local Sentinel Hub for the whole session (the scene is read once); stopped at teardown."""
    if not _SCENE:
        _SCENE.append(Scene.load())
    server = SentinelHubTestServer(server_dataset(), CLIENT_ID, SECRET, scene=_SCENE[0])
    yield server
    server.stop()


@pytest.fixture
def sh(sh_server: SentinelHubTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SentinelHubTestServer:
    """The server with a clean log and no faults, and a sentinelhub-py profile for it in a fresh XDG_CONFIG_HOME."""
    with sh_server.state.lock:
        sh_server.state.log.clear()
        sh_server.state.faults.clear()
        sh_server.state.pu_spent = 0.0
    home = tmp_path / "xdg"
    (home / "sentinelhub").mkdir(parents=True)
    profile = {
        "sh_client_id": CLIENT_ID,
        "sh_client_secret": SECRET,
        "sh_base_url": sh_server.url,
        "sh_token_url": sh_server.token_url,
    }
    (home / "sentinelhub" / "config.toml").write_text(tomli_w.dumps({PROFILE: profile}))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # oauthlib's switch for a plain-HTTP token endpoint
    monkeypatch.delenv("SH_CLIENT_ID", raising=False)
    monkeypatch.delenv("SH_CLIENT_SECRET", raising=False)
    from sentinelhub import SentinelHubDownloadClient

    SentinelHubDownloadClient.clear_cache()
    return sh_server


def sh_settings(run_dir: Path, aoi: Path, **source) -> dict:
    """The tiny chain's settings with the `sentinelhub` source (40 m S2, 10 m label: the sample's scaled analogue)."""
    settings = tiny_settings(run_dir, aoi)
    settings["source"] = {
        "name": "sentinelhub",
        "sh_profile": PROFILE,
        "lr_resolution_m": 40.0,
        "scale": 4,
        "time_interval": ["2022-05-01", "2022-10-31"],
        "vhr_collection_id": BYOC_ID,
        "vhr_gain": [LABEL_GAIN] * 4,
        "retry_base_s": 0.05,
        "retry_max_s": 2.0,
        "timeout_s": 10.0,
        "requests_per_s": 50.0,
        **source,
    }
    return settings


def sh_config_file(tmp_path: Path, aoi_box=(440100, 4164100, 443900, 4169900), **source) -> Path:
    """A tiny config file (2 x 3 tiles by default) for the sentinelhub source in tmp_path."""
    aoi = aoi_geojson(tmp_path / "aoi.geojson", *aoi_box)
    return write_config(tmp_path / "sh.toml", sh_settings(tmp_path / "run", aoi, **source))

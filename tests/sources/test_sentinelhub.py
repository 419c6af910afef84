"""The `sentinelhub` source against a local server that speaks Sentinel Hub's OAuth, Catalog and Process APIs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from srpipe import eopatch as ep
from srpipe.chain import STAGES
from srpipe.cluster.local import run_units
from srpipe.config import load_config
from srpipe.data.grid import read_grid
from srpipe.data.s2units import from_dn
from srpipe.download import download_tile
from srpipe.errors import ConfigError
from srpipe.plan.stage import plan
from srpipe.sources.sentinelhub.client import RateLimiter, RetryPolicy, SentinelHubError
from srpipe.sources.sentinelhub.source import S2_CLP
from tests import shfixtures
from tests.conftest import aoi_geojson, srpipe, write_config
from tests.shfixtures import BYOC_ID, LABEL_GAIN, SECRET, sh_config_file, sh_settings
from tests.shserver import SentinelHubTestServer

sh_server, sh = shfixtures.sh_server, shfixtures.sh  # the fixtures


def planned(tmp_path: Path, **source):
    """A planned tiny run (2 x 3 tiles) with the sentinelhub source; returns (config, first tile id)."""
    cfg = load_config(sh_config_file(tmp_path, **source))
    plan(cfg)
    return cfg, read_grid(cfg.run_path)[0].tile_id


def scene_reflectance(sh: SentinelHubTestServer, bounds, resolution_m: float) -> np.ndarray:
    """(h, w, 4) reflectance of the scene on a grid, as the server renders it (DN / 10000)."""
    width, height = round((bounds[2] - bounds[0]) / resolution_m), round((bounds[3] - bounds[1]) / resolution_m)
    dn, _ = sh.state.scene.render(list(bounds), width, height)
    return np.moveaxis(dn, 0, -1) / 10000


def test_download_fills_the_eopatch_contract_in_the_services_formats(sh, tmp_path):
    cfg, tile_id = planned(tmp_path)
    info = download_tile(cfg, tile_id)
    patch = ep.load_patch(cfg.run_path, tile_id, cfg.source.scale)
    tile = {t.tile_id: t for t in read_grid(cfg.run_path)}[tile_id]
    # 18 passes, one at 95 % cloud cover is above s2_max_cloud_cover 0.8; 2 labels
    assert info == {"s2_frames": 17, "vhr_frames": 2}
    assert patch[ep.S2_BANDS].shape == (17, 60, 60, 4) and patch[ep.S2_BANDS].dtype == np.float32
    assert patch[ep.VHR_BANDS].shape == (2, 240, 240, 4)
    assert patch[ep.S2_CLOUDS].dtype == bool and patch[ep.S2_VALID].all() and patch[ep.VHR_VALID].all()
    assert patch[S2_CLP].shape == (17, 60, 60, 1) and 0 <= patch[S2_CLP].min() <= patch[S2_CLP].max() <= 1
    assert patch.timestamps[0] == dt.datetime(2022, 5, 3)
    assert patch.meta_info[ep.VHR_TIMESTAMPS] == ["2022-08-14T00:00:00", "2022-09-21T00:00:00"]
    clear = ~patch[ep.S2_CLOUDS][..., 0]
    expected_s2 = scene_reflectance(sh, tile.bounds, 40.0)
    np.testing.assert_allclose(patch[ep.S2_BANDS][0], expected_s2, atol=0.6e-4)  # a cloudless date: the scene itself
    assert clear.sum() < clear.size  # some dates carry the server's cloud, flagged by CLM
    expected_label = scene_reflectance(sh, tile.bounds, 10.0) * 10000 * LABEL_GAIN  # DN x gain
    np.testing.assert_allclose(patch[ep.VHR_BANDS][1], expected_label, rtol=1e-6)
    assert patch.meta_info["s2_harmonize_values"] is True
    assert len(patch.meta_info["s2_baseline_0400_dates"]) == 17  # 2022: every date is baseline 04.00


def test_requests_carry_the_evalscript_bands_units_crs_bbox_resolution_time_and_filters(sh, tmp_path):
    cfg, tile_id = planned(tmp_path)
    download_tile(cfg, tile_id)
    tile = {t.tile_id: t for t in read_grid(cfg.run_path)}[tile_id]
    searches = [e["body"] for e in sh.state.requests_to("/api/v1/catalog/1.0.0/search")]
    assert {s["collections"][0] for s in searches} == {"sentinel-2-l1c", f"byoc-{BYOC_ID}"}
    s2_search = next(s for s in searches if s["collections"] == ["sentinel-2-l1c"])
    assert s2_search["filter"] == "eo:cloud_cover < 80" and s2_search["datetime"].startswith("2022-05-01T00:00:00")
    process = [e["body"] for e in sh.state.requests_to("/api/v1/process")]
    s2 = [b for b in process if b["input"]["data"][0]["type"] == "sentinel-2-l1c"]
    s2.sort(key=lambda b: b["input"]["data"][0]["dataFilter"]["timeRange"]["from"])  # two threads: any order
    vhr = [b for b in process if b["input"]["data"][0]["type"] == f"byoc-{BYOC_ID}"]
    assert len(s2) == 17 and len(vhr) == 2
    for body, resolution in ((s2[0], 40.0), (vhr[0], 10.0)):
        bounds = body["input"]["bounds"]
        assert bounds["properties"]["crs"] == "http://www.opengis.net/def/crs/EPSG/0/32618"
        assert bounds["bbox"] == list(tile.bounds)
        width = (tile.bounds[2] - tile.bounds[0]) / body["output"]["width"]
        assert width == resolution and {r["identifier"] for r in body["output"]["responses"]} == {"bands", "masks"}
    data = s2[0]["input"]["data"][0]
    assert data["dataFilter"]["maxCloudCoverage"] == 80 and data["processing"] == {"harmonizeValues": True}
    assert data["dataFilter"]["timeRange"] == {"from": "2022-05-03T00:00:00Z", "to": "2022-05-03T23:59:59Z"}
    assert re.search(r'bands: \["B02", "B03", "B04", "B08", "CLM", "CLP", "dataMask"\]', s2[0]["evalscript"])
    assert 'units: ["DN", "DN", "DN", "DN", "DN", "DN", "DN"]' in s2[0]["evalscript"]
    assert '{id: "bands", bands: 4, sampleType: "UINT16"}' in s2[0]["evalscript"]  # half the PU of FLOAT32
    assert re.search(r'bands: \["B", "G", "R", "N", "dataMask"\], units: \["DN"', vhr[0]["evalscript"])
    assert "processing" not in vhr[0]["input"]["data"][0]  # harmonizeValues is an S2 option


def test_without_harmonize_values_srpipe_removes_the_baseline_0400_offset_itself(sh, tmp_path):
    cfg, tile_id = planned(tmp_path, harmonize_values=False)
    download_tile(cfg, tile_id)
    patch = ep.load_patch(cfg.run_path, tile_id, cfg.source.scale)
    tile = {t.tile_id: t for t in read_grid(cfg.run_path)}[tile_id]
    body = sh.state.requests_to("/api/v1/process")[0]["body"]
    assert body["input"]["data"][0]["processing"] == {"harmonizeValues": False}
    np.testing.assert_allclose(patch[ep.S2_BANDS][0], scene_reflectance(sh, tile.bounds, 40.0), atol=0.6e-4)


def test_a_rerun_reads_the_download_cache_in_the_run_dir_and_pays_nothing(sh, tmp_path):
    cfg, tile_id = planned(tmp_path)
    download_tile(cfg, tile_id)
    paid = len(sh.state.requests_to("/api/v1/process"))
    assert (cfg.run_path / "_cache" / "sentinelhub").is_dir()
    download_tile(cfg, tile_id)
    assert len(sh.state.requests_to("/api/v1/process")) == paid
    cached = sorted((cfg.run_path / "_cache" / "sentinelhub").rglob("response.*"))
    cached[0].write_bytes(cached[0].read_bytes()[:100])  # as a task killed while writing it leaves it
    download_tile(cfg, tile_id)
    assert len(sh.state.requests_to("/api/v1/process")) == paid + 1  # that one response is fetched again


def test_429_and_503_are_retried_with_backoff_honouring_retry_after(sh, tmp_path):
    cfg, tile_id = planned(tmp_path)
    sh.state.faults += [("/api/v1/process", 429, {"Retry-After": "400"}), ("/api/v1/process", 503, {})]
    download_tile(cfg, tile_id)
    process = sh.state.requests_to("/api/v1/process")
    faults = [e for e in process if "fault" in e]
    assert [f["fault"] for f in faults] == [429, 503]
    later = [e["t"] for e in process if e["t"] > faults[0]["t"]]
    # Retry-After (milliseconds at Sentinel Hub) holds every thread; at most the other thread's request was in flight
    assert sorted(later)[1] - faults[0]["t"] >= 0.35
    assert patch_ok(cfg, tile_id)


def patch_ok(cfg, tile_id) -> bool:
    return ep.load_patch(cfg.run_path, tile_id, cfg.source.scale)[ep.S2_BANDS].shape[0] == 17


def test_retries_are_bounded_and_the_error_says_what_to_change(sh, tmp_path):
    cfg, tile_id = planned(tmp_path, max_retries=2)
    sh.state.faults += [("/api/v1/process", 503, {})] * 20  # more than both download threads retry
    with pytest.raises(SentinelHubError, match=r"answered 503 3 times.*source.requests_per_s"):
        download_tile(cfg, tile_id)
    assert not ep.patch_dir(cfg.run_path, tile_id).exists()


def test_a_dropped_connection_is_retried_then_named(sh, tmp_path):
    cfg, tile_id = planned(tmp_path, max_retries=1)
    sh.state.faults += [("/api/v1/process", "drop", {})]
    download_tile(cfg, tile_id)  # one drop: retried
    sh.state.faults += [("/api/v1/process", "drop", {})] * 20
    (cfg.run_path / "_cache").rename(tmp_path / "old-cache")
    with pytest.raises(SentinelHubError, match=r"connection .* was dropped or timed out 2 times.*source.timeout_s"):
        download_tile(cfg, tile_id)


def test_refused_credentials_name_the_credential_setting_and_never_the_secret(sh, tmp_path, monkeypatch):
    cfg, tile_id = planned(tmp_path)
    monkeypatch.setenv("SH_CLIENT_SECRET", "wrong-" + SECRET)  # the environment wins over the profile
    with pytest.raises(SentinelHubError) as info:
        download_tile(cfg, tile_id)
    assert "source.sh_profile" in str(info.value) and "SH_CLIENT_SECRET" in str(info.value)
    assert SECRET not in str(info.value)
    assert run_units(cfg, STAGES["download"], [tile_id]).failed  # the failure record and its traceback ...
    assert [p for p in cfg.run_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()] == []
    monkeypatch.delenv("SH_CLIENT_SECRET")
    sh.state.faults += [("/api/v1/process", 401, {})]  # a token the service no longer accepts
    with pytest.raises(SentinelHubError, match=r"refused the credentials \(401.*source.sh_profile"):
        download_tile(cfg, tile_id)


def test_missing_credentials_are_a_config_error_already_at_plan(sh, tmp_path):
    cfg = load_config(sh_config_file(tmp_path, sh_profile="nobody"))
    with pytest.raises(ConfigError, match=r"profile 'nobody' .*source.sh_profile"):
        plan(cfg)  # plan asks the catalog for the label coverage


def test_an_unknown_byoc_collection_names_the_collection_setting_already_at_plan(sh, tmp_path):
    cfg = load_config(sh_config_file(tmp_path, vhr_collection_id="no-such-collection"))
    with pytest.raises(SentinelHubError, match=r"\(404 .*source.vhr_collection_id.*'no-such-collection'"):
        plan(cfg)
    assert sh.state.requests_to("/api/v1/process") == []


def test_a_band_the_collection_lacks_is_rejected_by_the_server(sh, tmp_path):
    cfg, tile_id = planned(tmp_path, vhr_bands=["B", "G", "R", "NIR"])
    with pytest.raises(SentinelHubError, match=r'400 .*Invalid band name: \\?"NIR.*source.vhr_bands'):
        download_tile(cfg, tile_id)


def test_the_server_rejects_a_missing_token_and_a_crs_it_does_not_serve(sh):
    import requests

    body = {"input": {"bounds": {"bbox": [0, 0, 1, 1], "properties": {"crs": "EPSG:4326"}}, "data": []}}
    assert requests.post(f"{sh.url}/api/v1/process", json=body, timeout=5).status_code == 401
    token = requests.post(
        sh.token_url,
        data={"grant_type": "client_credentials", "client_id": "srpipe-test-client", "client_secret": SECRET},
        timeout=5,
    ).json()["access_token"]
    answer = requests.post(
        f"{sh.url}/api/v1/process", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert answer.status_code == 400 and "CRS" in answer.json()["error"]["message"]


def test_the_rate_limit_spaces_request_starts_in_a_process():
    limiter = RateLimiter(per_s=20.0)
    start = time.monotonic()
    for _ in range(6):
        limiter.wait()
    assert time.monotonic() - start >= 5 / 20 - 0.01


def test_backoff_is_jittered_exponential_capped_and_retry_after_wins():
    policy = RetryPolicy(max_retries=5, base_s=1.0, max_s=8.0)
    waits = [policy.backoff_s(4) for _ in range(200)]
    assert 0 <= min(waits) and max(waits) <= 8.0 and len(set(waits)) > 100
    assert max(policy.backoff_s(1) for _ in range(200)) <= 2.0
    assert policy.backoff_s(0, retry_after_s=3.0) == 3.0 and policy.backoff_s(0, retry_after_s=30.0) == 8.0


def test_a_killed_download_leaves_no_finished_eopatch_and_a_rerun_completes(sh, tmp_path):
    config = sh_config_file(tmp_path, requests_per_s=4.0)  # ~6 s per tile: time to kill it mid-tile
    cfg = load_config(config)
    plan(cfg)
    run = cfg.run_path
    tile_id = read_grid(run)[0].tile_id
    proc = subprocess.Popen(
        [sys.executable, "-m", "srpipe", "download", str(config), "--tiles", tile_id, "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(sh.state.requests_to("/api/v1/process")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert not ep.patch_dir(run, tile_id).exists() and not (run / "_state" / "download" / f"{tile_id}.done").exists()
    assert not run_units(cfg, STAGES["download"], [tile_id]).failed
    assert json.loads((run / "_state" / "download" / f"{tile_id}.done").read_text())["s2_frames"] == 17


def files_holding(folder: Path, needle: str) -> list[Path]:
    """Every file under `folder` whose bytes contain `needle` (text, pickles, HDF5, GeoTIFF alike)."""
    return [p for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.mark.slow
def test_the_chain_runs_to_a_mosaic_on_sentinelhub_eopatches_and_no_file_holds_the_secret(sh, tmp_path):
    import rasterio

    settings = sh_settings(tmp_path / "run", aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900))
    settings["train"]["epochs"], settings["delineation"]["epochs"] = 2, 1  # the data path is under test, not training
    config = write_config(tmp_path / "sh.toml", settings)
    # the chain up to what is asserted, the mosaic (and its catalog): evaluate's report is the sample's, not under test
    stages = ("plan", "download", "curate", "train-delineation", "train", "infer", "mosaic")
    results = [srpipe(stage, str(config)) for stage in stages]
    output = "".join(r.stdout + r.stderr for r in results)
    run = tmp_path / "run"
    with rasterio.open(run / "mosaics" / "tiny_2022-10-31_32618.tif") as src:
        assert src.crs.to_epsg() == 32618 and src.res == (10.0, 10.0)
        assert src.offsets[0] == 0  # harmonizeValues: Sentinel Hub removed baseline 04.00's -1000 DN offset
        data = from_dn(src.read())
    assert np.isfinite(data).mean() > 0.9 and 0.01 < np.nanmedian(data) < 0.5  # nodata only outside the AOI
    assert len(list((run / "eopatches").iterdir())) == 6
    assert list((run / "_cache" / "sentinelhub").iterdir()), "the download cache is in the run directory"
    assert files_holding(run, SECRET) == [] and files_holding(tmp_path / "xdg", SECRET)  # only the profile has it
    assert SECRET not in output
    assert "sentinelhub estimate: 6 tiles x (17.0 S2 + 2.0 label dates) = 114 Process API requests" in output


def test_download_estimate_prints_requests_and_the_pu_the_service_then_charges(sh, tmp_path, capsys):
    from srpipe.cli import main

    cfg, tile_id = planned(tmp_path)
    assert main(["download", str(cfg.run_path), "--estimate", "--tiles", tile_id]) == 0
    line = capsys.readouterr().out
    assert "1 tiles x (17.0 S2 + 2.0 label dates) = 19 Process API requests" in line
    assert sh.state.requests_to("/api/v1/process") == []  # the estimate pays for nothing
    estimated = float(re.search(r"requests, ([\d.]+) processing units", line).group(1))
    download_tile(cfg, tile_id)
    assert estimated == pytest.approx(sh.state.pu_spent, abs=0.05)  # the server charges by the published formula


def test_pu_formula_follows_the_published_rules():
    from srpipe.sources.sentinelhub.cost import request_pu

    assert request_pu(512, 512, 3, float32=False) == 1.0  # the definition of 1 PU
    assert request_pu(1024, 512, 6, float32=True) == 8.0  # area x2, bands x2, 32-bit float x2
    assert request_pu(10, 10, 3, float32=False) == 0.01  # the area factor is at least 0.01
    assert request_pu(10, 10, 1, float32=False) == 0.005  # a request costs at least 0.005 PU


def test_the_lithuania_example_config_loads_and_out_of_range_settings_name_their_key(sh, tmp_path):
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "lithuania-sentinelhub.toml")
    assert cfg.source.name == "sentinelhub" and Path(cfg.plan.aoi).exists() and cfg.source.sh_profile == "srpipe"
    cfg, tile_id = planned(tmp_path)
    (tmp_path / "bad").mkdir()
    bad = load_config(sh_config_file(tmp_path / "bad", vhr_bands=["B", "G", "R"]))
    with pytest.raises(ConfigError, match=r"'source.vhr_bands' needs 4 values"):
        download_tile(dataclasses.replace(cfg, source=bad.source), tile_id)


def test_labels_from_files_replace_the_byoc_collection(sh, tmp_path):
    """`source.vhr_files` with the sentinelhub source: S2 from the service, labels from an EPSG:3857 orthophoto
    (area-averaged onto the label grid), no label request sent and the tiles outside the file dropped at plan."""
    from tests.stacfixtures import write_cog

    box = (-8_425_100.0, 4_525_600.0, -8_421_700.0, 4_534_100.0)  # EPSG:3857 around the west column of tiles only
    write_cog(tmp_path / "ortho" / "o_2022-08-14.tif", np.full((4, 1700, 680), 1234), 3857, box, "uint16")
    cfg, tile_id = planned(
        tmp_path, vhr_files=str(tmp_path / "ortho"), vhr_date_pattern="%Y-%m-%d", vhr_gain=[1e-4] * 4
    )
    tiles = read_grid(cfg.run_path)
    assert len(tiles) == 3  # plan kept only the west column, inside the orthophoto
    before = len(sh.state.requests_to("/api/v1/process"))
    download_tile(cfg, tile_id)
    patch = ep.load_patch(cfg.run_path, tile_id, cfg.source.scale)
    assert patch.meta_info[ep.VHR_TIMESTAMPS] == ["2022-08-14T00:00:00"]
    assert patch[ep.VHR_VALID].all() and np.allclose(patch[ep.VHR_BANDS], 0.1234, atol=1e-6)
    assert len(sh.state.requests_to("/api/v1/process")) - before == patch[ep.S2_BANDS].shape[0]  # S2 only

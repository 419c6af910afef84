"""Zone x date mosaics streamed block by block from tile cores; per-date VRT, reprojected mosaic, STAC that validates.

The run: an AOI across 24°E (the 34N/35N zone boundary) split into 2 km tiles, predictions written as small uint16 COGs
at 20 m (a known value per tile, 9 in the buffer so a leak shows), infer's done records faked; no model.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pystac
import pystac.validation
import pytest
import rasterio
import shapely
from pyproj import Transformer
from rasterio.transform import from_bounds
from rio_cogeo.cogeo import cog_validate

from srpipe import BANDS, STD_BANDS, state, twin_bands
from srpipe.chain import STAGES, ChainState, fingerprint, pending_units, run_unit, stage_units
from srpipe.config import Config, InferConfig, MosaicConfig, PlanConfig
from srpipe.data.cog import write_cog
from srpipe.data.grid import Tile, split_aoi, write_grid
from srpipe.errors import StageError
from srpipe.infer.record import InferRecord
from srpipe.mosaic import stage as mosaic_module
from srpipe.state import file_sha256

SCHEMAS = Path(__file__).parents[1] / "stac_schemas"  # the extensions' JSON schemas, vendored: validation runs offline
DATE = "2016-10-31"
RES_M = 20.0  # prediction pixel size: small files (the real 2.5 m changes nothing but the size)
AOI = shapely.Polygon([(23.962, 55.003), (24.041, 55.001), (24.038, 55.031), (23.965, 55.029)])  # a quadrilateral


def tile_value(tile_id: str, tiles: list[Tile]) -> int:
    """The known DN of a tile: 1000 + 10 * its index in the grid."""
    return 1000 + 10 * [t.tile_id for t in tiles].index(tile_id)


def predict(cfg: Config, t: Tile, value: float, date: str = DATE, dtype: str = "uint16") -> None:
    """A constant SR tile at `value` on its buffered box, 9 in the buffer."""
    n = round((t.bounds[2] - t.bounds[0]) / RES_M)
    buffer = round((t.core[0] - t.bounds[0]) / RES_M)
    image = np.full((4, n, n), 9, dtype)
    image[:, buffer : n - buffer, buffer : n - buffer] = value
    path = cfg.layout.prediction(cfg.prediction_model, t.tile_id, date)
    write_cog(path, image, from_bounds(*t.bounds, n, n), t.epsg, cfg.mosaic, {"tile_id": t.tile_id})


def record(cfg: Config, t: Tile, dates: list[str], version: str = "v1", offset_dn: int = 0) -> None:
    """Infer's done record of `t`: its zone, output dates, offset, input frames and the SHA-256 of its COGs (what
    mosaic reads), current."""
    frames = {d: ["2016-10-20", "2016-10-25"] for d in dates}
    inputs = ChainState(cfg).inputs(STAGES["infer"], t.tile_id)
    current = {"inputs": fingerprint(inputs), "inputs_detail": inputs, "version": version}
    offsets = {d: offset_dn for d in dates}  # as infer records it: per date
    paths = [cfg.layout.prediction(cfg.prediction_model, t.tile_id, d) for d in dates]
    digests = {p.name: state.file_sha256(p) for p in paths if p.exists()}
    info = {**InferRecord(t.tile_id, t.epsg, tuple(dates), frames, offsets, sha256=digests).info(), **current}
    state.mark_done(cfg.run_path, "infer", t.tile_id, info)


def run_stage(cfg: Config, name: str) -> dict[str, str | None]:
    """Run every pending unit of stage `name` in this process: {unit: error or None}."""
    stage = STAGES[name]
    todo, _ = pending_units(cfg, stage, stage_units(cfg, stage))
    return dict(run_unit(cfg, stage, pending) for pending in todo)


@pytest.fixture
def run(tmp_path: Path) -> tuple[Config, list[Tile]]:
    """A planned run over AOI with every tile predicted on DATE except the last of zone 35N."""
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(AOI)}))
    mosaic = MosaicConfig(blocksize=64, min_overview_px=32)
    cfg = Config(run_dir=str(tmp_path / "run"), plan=PlanConfig(aoi=str(aoi), region="t"), mosaic=mosaic)
    tiles = split_aoi(AOI, 2000.0, 0.2, "t")
    write_grid(tiles, cfg.layout.grid)
    (cfg.layout.model(cfg.train.name) / "model.pt").parent.mkdir(parents=True)
    (cfg.layout.model(cfg.train.name) / "model.pt").write_bytes(b"weights")
    for t in tiles[:-1]:
        predict(cfg, t, tile_value(t.tile_id, tiles))
        record(cfg, t, [DATE])
    return cfg, tiles


def pixel(path: Path, x: float, y: float, crs: int | str = 4326) -> int:
    """Band 1 of the raster at `path` at (x, y) in `crs`."""
    return int(sample(path, x, y, crs))


def sample(path: Path, x: float, y: float, crs: int | str = 4326) -> float:
    """Band 1 of the raster at `path` at (x, y) in `crs`, in its own dtype."""
    with rasterio.open(path) as src:
        px, py = Transformer.from_crs(crs, src.crs, always_xy=True).transform(x, y)
        return next(src.sample([(px, py)], indexes=1))[0]


def predict_spread(cfg: Config, t: Tile, core: np.ndarray) -> None:
    """Infer's `<date>.std.tif` of `t`: (4, c, c) float32 `core` on its core, 9 in the buffer (a leak shows)."""
    n = round((t.bounds[2] - t.bounds[0]) / RES_M)
    buffer = round((t.core[0] - t.bounds[0]) / RES_M)
    image = np.full((4, n, n), 9, np.float32)
    image[:, buffer : n - buffer, buffer : n - buffer] = core
    path = cfg.layout.prediction_std(cfg.prediction_model, t.tile_id, DATE)
    write_cog(path, image, from_bounds(*t.bounds, n, n), t.epsg, cfg.mosaic, {"tile_id": t.tile_id}, 0, STD_BANDS)


def with_spread(cfg: Config, tiles: list[Tile], cores: dict[str, np.ndarray]) -> Config:
    """`cfg` with infer.uncertainty on; each of `tiles[:-1]` re-inferred with its spread `cores[tile_id]`."""
    cfg = dataclasses.replace(cfg, infer=InferConfig(self_ensemble=True, uncertainty=True))
    for t in tiles[:-1]:
        predict_spread(cfg, t, cores[t.tile_id])
        record(cfg, t, [DATE])  # infer's inputs changed (uncertainty): a new record, as a re-run writes
    return cfg


def core_lonlat(t: Tile) -> shapely.Geometry:
    """The tile's core in EPSG:4326."""
    to_lonlat = Transformer.from_crs(t.epsg, 4326, always_xy=True)
    dense = shapely.segmentize(shapely.box(*t.core), 50.0)
    return shapely.transform(dense, lambda xy: np.column_stack(to_lonlat.transform(*xy.T)))


def test_tile_cores_tile_the_aoi_exactly_in_each_zone():
    tiles = split_aoi(AOI, 2000.0, 0.2, "t")
    zones = {t.epsg for t in tiles}
    assert zones == {32634, 32635}
    for epsg, (west, east) in {32634: (18, 24), 32635: (24, 30)}.items():
        cores = [shapely.box(*t.core) for t in tiles if t.epsg == epsg]
        union = shapely.union_all(cores)
        assert union.area == pytest.approx(sum(c.area for c in cores))  # no overlaps
        strip = shapely.intersection(AOI, shapely.box(west, -80, east, 84))
        part = mosaic_module._aoi_in(strip, epsg)
        assert union.buffer(1e-6).covers(part)  # no gaps


def test_a_zone_mosaic_has_each_cores_value_nodata_outside_the_aoi_and_lists_the_missing_tile(run):
    cfg, tiles = run
    assert run_stage(cfg, "mosaic") == {"32634_2016-10-31": None, "32635_2016-10-31": None}
    info = state.done_info(cfg.run_path, "mosaic", "32635_2016-10-31")["mosaics"][0]
    assert info["missing"] == [tiles[-1].tile_id] and info["dtype"] == "uint16"
    assert info["input_dates"] == ["2016-10-20", "2016-10-25"] and info["cog_warnings"] == []
    path = cfg.layout.zone_mosaic("t", DATE, 32635)
    assert cog_validate(str(path), quiet=True)[0]
    with rasterio.open(path) as src:
        assert src.res == (RES_M, RES_M) and src.nodata == 0 and src.block_shapes[0] == (64, 64)
        assert src.scales[0] == pytest.approx(1e-4) and src.overviews(1)
    aoi_zone = mosaic_module._aoi_in(AOI, 32635)
    for t in tiles:
        if t.epsg != 32635:
            continue
        x, y = (t.core[0] + t.core[2]) / 2, (t.core[1] + t.core[3]) / 2
        inside = aoi_zone.contains(shapely.Point(x, y))
        expected = tile_value(t.tile_id, tiles) if inside and t != tiles[-1] else 0
        assert pixel(path, x, y, 32635) == expected, t.tile_id
    assert 9 not in np.unique(rasterio.open(path).read(1))  # no buffer pixel leaked
    corner = tiles[next(i for i, t in enumerate(tiles) if t.epsg == 32635)].core
    assert pixel(path, corner[0] + 10, corner[1] + 10, 32635) == 0  # inside a core, outside the quadrilateral AOI


def test_the_date_vrt_and_the_reprojected_mosaic_give_the_covering_tiles_value_at_a_lon_lat(run):
    cfg, tiles = run
    cfg = dataclasses.replace(cfg, mosaic=dataclasses.replace(cfg.mosaic, crs="EPSG:3346"))
    run_stage(cfg, "mosaic")
    assert run_stage(cfg, "catalog") == {"all": None}
    vrt, lks = cfg.layout.date_vrt("t", DATE), cfg.layout.reprojected_mosaic("t", DATE, "EPSG:3346")
    assert cog_validate(str(lks), quiet=True)[0]
    checked = 0
    for t in tiles[:-1]:  # a point of each core inside the AOI, off the zones' overlap and 2 px off any edge
        others = shapely.union_all([core_lonlat(o) for o in tiles if o.epsg != t.epsg])
        region = core_lonlat(t).intersection(AOI).difference(others).buffer(-0.0006)
        if region.is_empty:
            continue
        point = region.representative_point()
        assert pixel(vrt, point.x, point.y) == pixel(lks, point.x, point.y) == tile_value(t.tile_id, tiles), t.tile_id
        checked += 1
    assert checked >= 6
    assert pixel(vrt, 23.95, 55.02) == pixel(lks, 23.95, 55.02) == 0  # west of the AOI
    with rasterio.open(lks) as src:
        assert src.crs.to_epsg() == 3346 and src.dtypes[0] == "uint16"


def test_a_killed_mosaic_leaves_no_half_written_cog_and_a_rerun_completes_it(run, monkeypatch):
    cfg, _ = run
    calls = {"n": 0}
    original = mosaic_module._block

    def dies_midway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")  # as a signal would, not a clean StageError
        return original(*args, **kwargs)

    monkeypatch.setattr(mosaic_module, "_block", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        mosaic_module.mosaic_unit(cfg, "32634_2016-10-31")
    assert list(cfg.layout.mosaics.iterdir()) == []  # neither the COG nor a scratch file
    monkeypatch.setattr(mosaic_module, "_block", original)
    assert run_stage(cfg, "mosaic") == {"32634_2016-10-31": None, "32635_2016-10-31": None}
    assert sorted(p.name for p in cfg.layout.mosaics.iterdir()) == ["t_2016-10-31_32634.tif", "t_2016-10-31_32635.tif"]


def test_a_new_tile_or_date_redoes_only_the_zone_dates_it_touches(run):
    cfg, tiles = run
    run_stage(cfg, "mosaic")
    predict(cfg, tiles[-1], 7)
    record(cfg, tiles[-1], [DATE])  # the missing tile of 35N inferred now
    assert run_stage(cfg, "mosaic") == {"32635_2016-10-31": None}
    assert state.done_info(cfg.run_path, "mosaic", "32635_2016-10-31")["mosaics"][0]["missing"] == []
    predict(cfg, tiles[0], 5, "2016-11-10")
    record(cfg, tiles[0], [DATE, "2016-11-10"], version="v2")  # one 34N tile redone with a second date
    assert run_stage(cfg, "mosaic") == {"32634_2016-10-31": None, "32634_2016-11-10": None}
    assert run_stage(cfg, "mosaic") == {}


def test_tiles_that_disagree_on_the_offset_are_an_error_naming_them(run):
    cfg, tiles = run
    record(cfg, tiles[0], [DATE], offset_dn=-1000)
    with pytest.raises(StageError, match=rf"offset -1000: {tiles[0].tile_id}"):
        mosaic_module.mosaic_unit(cfg, f"{tiles[0].epsg}_{DATE}")


@pytest.mark.faults
@pytest.mark.parametrize("fault", ["one bit flipped", "truncated"])
def test_a_corrupt_prediction_cog_is_an_error_naming_the_file_and_the_command_that_rebuilds_it(run, fault):
    cfg, tiles = run
    path = cfg.layout.prediction(cfg.prediction_model, tiles[0].tile_id, DATE)
    data = bytearray(path.read_bytes())
    if fault == "truncated":
        data = data[: len(data) // 2]
    else:
        data[-100] ^= 0x01  # inside the last block's data: GDAL itself may read it without complaint
    path.write_bytes(bytes(data))
    fix = rf"{path} is corrupt .* delete _state/infer/{tiles[0].tile_id}.done, then `srpipe infer RUN --tiles"
    with pytest.raises(StageError, match=fix):
        mosaic_module.mosaic_unit(cfg, f"{tiles[0].epsg}_{DATE}")


def test_float32_predictions_give_a_float32_mosaic_with_nan_nodata(run):
    cfg, tiles = run
    zone = [t for t in tiles if t.epsg == 32634]
    for t in zone:
        predict(cfg, t, 0.25, dtype="float32")
        record(cfg, t, [DATE])  # infer records what it wrote
    info = mosaic_module.mosaic_unit(cfg, f"32634_{DATE}")["mosaics"][0]
    with rasterio.open(info["path"]) as src:
        data = src.read(1)
    assert src.dtypes[0] == "float32" and set(np.unique(data[np.isfinite(data)])) == {np.float32(0.25)}
    assert np.isnan(data).any()  # outside the AOI


def _offline_validator() -> pystac.validation.JsonSchemaSTACValidator:
    """pystac's validator with the extensions' schemas from tests/stac_schemas (pystac ships the core ones)."""
    import jsonschema  # noqa: F401 - a dev dependency: without it pystac cannot validate, and this test must fail

    validator = pystac.validation.JsonSchemaSTACValidator()
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text())
        validator.schema_cache[schema["$id"].rstrip("#")] = schema
    return validator


def test_stac_items_and_collection_validate_offline_and_carry_bands_projection_and_lineage(run):
    cfg, _ = run
    run_stage(cfg, "mosaic")
    run_stage(cfg, "catalog")
    pystac.validation.set_validator(_offline_validator())
    try:
        collection = pystac.Collection.from_file(str(cfg.layout.stac / "collection.json"))
        assert collection.validate_all() == 2  # both items, against the core and every extension's schema
        collection.validate()
    finally:
        pystac.validation.set_validator(pystac.validation.JsonSchemaSTACValidator())
    item = collection.get_item("t_2016-10-31_32634", recursive=True)
    assert item.properties["proj:code"] == "EPSG:32634" and "gsd" not in item.properties
    assert item.properties["processing:software"]["srpipe"] == "0.1.0"
    model = cfg.layout.model(cfg.train.name) / "model.pt"
    assert item.properties["processing:software"][f"srpipe-model:{cfg.train.name}"] == f"sha256:{file_sha256(model)}"
    band = item.assets["data"].extra_fields["bands"][2]
    assert band["name"] == "B04" and band["eo:common_name"] == "red" and band["nodata"] == 0
    assert band["raster:scale"] == 1e-4 and band["raster:spatial_resolution"] == RES_M
    assert item.assets["data"].get_absolute_href() == str(cfg.layout.zone_mosaic("t", DATE, 32634))
    assert collection.assets[f"vrt-{DATE}"].get_absolute_href() == str(cfg.layout.date_vrt("t", DATE))
    assert [link.title[:27] for link in item.get_links("derived_from")] == ["Sentinel-2 L1C of 2016-10-2"] * 2
    footprint = shapely.geometry.shape(item.geometry)
    assert AOI.covers(footprint.buffer(-1e-9)) and footprint.area > 0.3 * AOI.area  # the AOI's part in 34N


def test_mosaic_does_not_import_torch_or_the_training_and_inference_modules():
    heavy = "('torch', 'srpipe.infer.stage', 'srpipe.training.train')"
    imports = "import sys, srpipe.mosaic.stage, srpipe.mosaic.catalog"
    code = f"{imports}; print(sorted(m for m in {heavy} if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_the_spread_mosaic_equals_each_tiles_std_on_its_core_and_is_nan_elsewhere(run):
    cfg, tiles = run
    cfg = dataclasses.replace(cfg, mosaic=dataclasses.replace(cfg.mosaic, mask_aoi=False))
    rng = np.random.default_rng(0)
    n = round((tiles[0].core[2] - tiles[0].core[0]) / RES_M)
    cores = {t.tile_id: rng.random((4, n, n), dtype=np.float32) / 20 for t in tiles}
    cfg = with_spread(cfg, tiles, cores)
    assert run_stage(cfg, "mosaic") == {"32634_2016-10-31": None, "32635_2016-10-31": None}
    for epsg in (32634, 32635):
        info = state.done_info(cfg.run_path, "mosaic", f"{epsg}_{DATE}")["mosaics"][0]
        path = cfg.layout.zone_mosaic("t", DATE, epsg, spread=True)
        assert info["spread"] == str(path) and info["spread_cog_warnings"] == []
        assert cog_validate(str(path), quiet=True)[0]
        with rasterio.open(path) as src:
            data, transform = src.read(), src.transform
            assert src.dtypes[0] == "float32" and np.isnan(src.nodata) and src.descriptions == STD_BANDS
            assert src.block_shapes[0] == (64, 64) and src.overviews(1)
        covered = np.zeros(data.shape[1:], bool)
        for t in (t for t in tiles if t.epsg == epsg):
            window = rasterio.windows.from_bounds(*t.core, transform).round_offsets().round_lengths()
            rows, cols = window.toslices()
            expected = cores[t.tile_id] if t != tiles[-1] else np.full((4, n, n), np.nan, np.float32)  # no infer
            np.testing.assert_array_equal(data[:, rows, cols], expected, err_msg=t.tile_id)
            covered[rows, cols] = True
        assert covered.all()  # the zone's grid is its cores: every pixel was compared


def _validated_collection(cfg: Config) -> pystac.Collection:
    """The run's STAC collection, its collection and 2 items validated against the (offline) schemas."""
    pystac.validation.set_validator(_offline_validator())
    try:
        collection = pystac.Collection.from_file(str(cfg.layout.stac / "collection.json"))
        assert collection.validate_all() == 2
    finally:
        pystac.validation.set_validator(pystac.validation.JsonSchemaSTACValidator())
    return collection


def test_the_spread_is_in_the_date_vrt_the_reprojected_cog_and_stac_with_its_role_and_units(run):
    cfg, tiles = run
    n = round((tiles[0].core[2] - tiles[0].core[0]) / RES_M)
    spread = {t.tile_id: tile_value(t.tile_id, tiles) / 1e5 for t in tiles}  # a known value per tile
    cfg = with_spread(cfg, tiles, {t: np.full((4, n, n), v, np.float32) for t, v in spread.items()})
    cfg = dataclasses.replace(cfg, mosaic=dataclasses.replace(cfg.mosaic, crs="EPSG:3346"))
    run_stage(cfg, "mosaic")
    assert run_stage(cfg, "catalog") == {"all": None}
    vrt = cfg.layout.date_vrt("t", DATE, spread=True)
    lks = cfg.layout.reprojected_mosaic("t", DATE, "EPSG:3346", spread=True)
    assert cog_validate(str(lks), quiet=True)[0]
    checked = 0
    for t in tiles[:-1]:  # a point of the core inside the AOI, off the zones' overlap and 2 px off any edge
        others = shapely.union_all([core_lonlat(o) for o in tiles if o.epsg != t.epsg])
        region = core_lonlat(t).intersection(AOI).difference(others).buffer(-0.0006)
        if not region.is_empty:
            point = region.representative_point()
            expected = np.float32(spread[t.tile_id])
            assert sample(vrt, point.x, point.y) == sample(lks, point.x, point.y) == pytest.approx(expected), t
            checked += 1
    assert checked >= 6
    assert np.isnan(sample(vrt, 23.95, 55.02)) and np.isnan(sample(lks, 23.95, 55.02))  # west of the AOI
    with rasterio.open(lks) as src:
        assert src.dtypes[0] == "float32" and src.descriptions == STD_BANDS and src.crs.to_epsg() == 3346
    collection = _validated_collection(cfg)
    asset = collection.get_item("t_2016-10-31_32634", recursive=True).assets["spread"]
    assert asset.roles == ["data", "uncertainty"] and "8 self-ensemble views" in asset.description
    assert asset.get_absolute_href() == str(cfg.layout.zone_mosaic("t", DATE, 32634, spread=True))
    band = asset.extra_fields["bands"][2]
    assert band["name"] == "B04_std" and band["unit"] == "1" and band["data_type"] == "float32"
    assert band["nodata"] == "nan" and band["raster:spatial_resolution"] == RES_M
    assert collection.assets[f"spread-vrt-{DATE}"].get_absolute_href() == str(vrt)
    assert collection.assets[f"spread-EPSG:3346-{DATE}"].get_absolute_href() == str(lks)


def test_a_tile_without_its_std_raster_is_an_error_naming_it_when_uncertainty_is_on(run):
    cfg, tiles = run
    n = round((tiles[0].core[2] - tiles[0].core[0]) / RES_M)
    cfg = with_spread(cfg, tiles, {t.tile_id: np.zeros((4, n, n), np.float32) for t in tiles})
    cfg.layout.prediction_std(cfg.prediction_model, tiles[0].tile_id, DATE).unlink()
    with pytest.raises(StageError, match=rf"no {DATE}.std.tif \({tiles[0].tile_id}\)"):
        mosaic_module.mosaic_unit(cfg, f"{tiles[0].epsg}_{DATE}")


def test_interval_half_widths_are_mosaicked_after_the_spread_and_listed_in_stac_with_level_and_calibration(run):
    cfg, tiles = run
    n = round((tiles[0].core[2] - tiles[0].core[0]) / RES_M)
    cfg = dataclasses.replace(cfg, infer=InferConfig(self_ensemble=True, interval=0.9))
    calibration = "split conformal on 1000 val pixels of 10 samples, 2 tiles"
    width = {t.tile_id: tile_value(t.tile_id, tiles) / 1e5 for t in tiles}
    for t in tiles[:-1]:  # std 1e-3, then the 90 % half-width: a known value per tile
        core = np.concatenate([np.full((4, n, n), 1e-3, np.float32), np.full((4, n, n), width[t.tile_id], np.float32)])
        buffer = round((t.core[0] - t.bounds[0]) / RES_M)
        image = np.full((8, n + 2 * buffer, n + 2 * buffer), 9, np.float32)
        image[:, buffer : n + buffer, buffer : n + buffer] = core
        tags = {"tile_id": t.tile_id, "interval_levels": "0.90", "interval_calibration": calibration}
        path = cfg.layout.prediction_std(cfg.prediction_model, t.tile_id, DATE)
        transform = from_bounds(*t.bounds, n + 2 * buffer, n + 2 * buffer)
        write_cog(path, image, transform, t.epsg, cfg.mosaic, tags, 0, twin_bands((0.9,)))
        record(cfg, t, [DATE])
    run_stage(cfg, "mosaic")
    assert run_stage(cfg, "catalog") == {"all": None}
    zone = cfg.layout.zone_mosaic("t", DATE, 32634, spread=True)
    with rasterio.open(zone) as src, rasterio.open(cfg.layout.date_vrt("t", DATE, spread=True)) as vrt:
        assert src.descriptions == vrt.descriptions == twin_bands((0.9,)) == (*STD_BANDS, *(f"{b}_hw90" for b in BANDS))
        assert src.tags()["interval_levels"] == "0.90" and src.tags()["interval_calibration"] == calibration
        data = src.read()
        transform = src.transform
    for t in (t for t in tiles[:-1] if t.epsg == 32634):
        rows, cols = rasterio.windows.from_bounds(*t.core, transform).round_offsets().round_lengths().toslices()
        values = data[4:, rows, cols]  # NaN off the AOI
        assert np.isfinite(values).any() and (values[np.isfinite(values)] == width[t.tile_id]).all(), t
    collection = _validated_collection(cfg)
    asset = collection.get_item("t_2016-10-31_32634", recursive=True).assets["spread"]
    assert asset.extra_fields["srpipe:interval_levels"] == [0.9]
    assert asset.extra_fields["srpipe:interval_calibration"] == calibration and calibration in asset.description
    band = asset.extra_fields["bands"][6]
    assert band["name"] == "B04_hw90" and band["unit"] == "1" and "with probability 0.90" in band["description"]

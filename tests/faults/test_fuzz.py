"""Fuzzed input (hypothesis): the config and profile loaders, the AOI reader and the EOPatch check give a valid object
or srpipe's own error naming the key, file or tile; never a library traceback, never a hang."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from eolearn.core import EOPatch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from srpipe.cli import main
from srpipe.cluster.profiles import Profile, load_profile
from srpipe.config import Config, load_config
from srpipe.data.grid import load_aoi, split_aoi
from srpipe.eopatch import S2_BANDS, S2_CLOUDS, S2_VALID, VHR_BANDS, VHR_TIMESTAMPS, VHR_VALID, check_patch
from srpipe.errors import ConfigError, SrpipeError, TileError
from tests.conftest import tiny_settings

pytestmark = pytest.mark.faults
# derandomized: CI sees the same examples each run; no explain phase (its tracing of GDAL calls takes minutes)
QUIET = {"derandomize": True, "phases": [Phase.explicit, Phase.generate, Phase.shrink], "database": None}
FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture], **QUIET)

# TOML values of every kind, the awkward ones included: NaN, inf, huge ints, NUL and non-ASCII text, dates
_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False),
    st.text(max_size=12),
    st.sampled_from(["", "latest", "all", "2016-05-01", "2016-13-45", "EPSG:4326", "slurm", "local", "\x00"]),
    st.dates(),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the dataclass `cls` (nested tables included)."""
    import dataclasses
    import typing

    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(hint):
            keys += _keys(hint, f"{prefix}{f.name}.")
    return keys


def _mutated(base: dict, changes: list[tuple[str, object]]) -> dict:
    """`base` with each dotted key set to its value (tables made where missing, or replacing a scalar)."""
    data = json.loads(json.dumps(base))
    for key, value in changes:
        *tables, last = key.split(".")
        node = data
        for name in tables:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                break
        else:
            node[last] = value
    return data


def _key_changes(keys: list[str]) -> st.SearchStrategy:
    """1-3 (dotted key, value) pairs: known keys mostly, an unknown key sometimes."""
    known = st.sampled_from(keys)
    key = st.one_of(known, known.map(lambda k: k + "x"), st.text(min_size=1, max_size=6))
    return st.lists(st.tuples(key, _values), min_size=1, max_size=3)


def _expect_config_or_error(path: Path) -> None:
    """load_config gives a Config whose derived values work, or a ConfigError naming a key or the file."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert "key" in str(exc) or str(path) in str(exc), exc
        return
    assert isinstance(cfg, Config)
    assert isinstance(cfg.as_of_date, dt.date) and cfg.layout.config.name == "config.toml"


@FUZZ
@given(changes=_key_changes(_keys(Config)))
def test_fuzzed_config_keys_and_values_load_or_name_the_key(tmp_path, changes):
    settings_ = _mutated(tiny_settings(tmp_path / "run", tmp_path / "aoi.geojson"), changes)
    try:
        text = tomli_w.dumps(settings_)
    except (TypeError, ValueError):
        return  # not expressible in TOML (e.g. a NUL in a key): no user can write it
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    _expect_config_or_error(path)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_fuzzed_config_bytes_load_or_name_the_file(tmp_path, raw):
    path = tmp_path / "fuzz.toml"
    path.write_bytes(raw)
    _expect_config_or_error(path)


def test_a_bad_config_exits_with_status_2_and_a_line_naming_the_key(tmp_path, capsys):
    settings_ = tiny_settings(tmp_path / "run", tmp_path / "aoi.geojson")
    settings_["plan"]["tile_size_m"] = math.nan
    path = tmp_path / "nan.toml"
    path.write_text(tomli_w.dumps(settings_))
    assert main(["plan", str(path)]) == 2
    assert "plan.tile_size_m" in capsys.readouterr().err


@FUZZ
@given(changes=_key_changes(_keys(Profile) + [f"stages.{s}.{k}" for s in ("train", "infer") for k in ("mem_gb", "x")]))
def test_fuzzed_profiles_load_or_name_the_key(tmp_path, changes):
    base = {"name": "fuzz", "executor": "slurm", "defaults": {"time_min": 10}, "stages": {"train": {"mem_gb": 2.0}}}
    try:
        text = tomli_w.dumps(_mutated(base, changes))
    except (TypeError, ValueError):
        return
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    try:
        profile = load_profile(path)
    except ConfigError as exc:
        assert "key" in str(exc) or str(path) in str(exc), exc
        return
    for stage in ("download", "train", "infer"):
        res = profile.resources(stage)
        assert res.time_min > 0 and res.mem_gb > 0 and math.isfinite(res.mem_gb), res


# AOIs: boxes anywhere (across the antimeridian, UTM zone borders, the poles), tiny to huge, in a right or wrong CRS
_lon = st.floats(-400, 400, allow_nan=False, allow_subnormal=False)
_lat = st.floats(-100, 100, allow_nan=False, allow_subnormal=False)
_size = st.sampled_from([0.0, 1e-9, 1e-5, 0.01, 0.05, 1.0, 30.0, 200.0, 400.0])
_crs = st.sampled_from([None, "EPSG:4326", "EPSG:32618", "EPSG:3857", "EPSG:3346", "EPSG:99999", "not a crs"])


@st.composite
def _rings(draw) -> list[list[float]]:
    """A closed ring: a box of random size, or a bow tie (self-intersecting), or random points (maybe NaN)."""
    x, y, w, h = draw(_lon), draw(_lat), draw(_size), draw(_size)
    kind = draw(st.sampled_from(["box", "bowtie", "points", "antimeridian", "zone_border"]))
    if kind == "antimeridian":
        x, w = 179.99, 0.02  # from 179.99 to 180.01, or written as the GeoJSON spec says: -179.99 after +179.99
    if kind == "zone_border":
        x = 6.0 * draw(st.integers(-30, 29)) - 0.01
    corners = [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]
    if kind == "bowtie":
        corners = [[x, y], [x + w, y + h], [x + w, y], [x, y + h]]
    if kind == "points":
        coords = st.one_of(st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False), _lon)
        corners = draw(st.lists(st.lists(coords, min_size=2, max_size=3), min_size=0, max_size=5))
    return [*corners, corners[0]] if corners else []


@settings(max_examples=120, deadline=10000, suppress_health_check=[HealthCheck.function_scoped_fixture], **QUIET)
@given(rings=st.lists(_rings(), min_size=0, max_size=3), crs=_crs, tile_size_m=st.sampled_from([500.0, 2000.0]))
def test_fuzzed_aois_give_tiles_or_name_the_file(tmp_path, rings, crs, tile_size_m):
    polygons = [{"type": "Polygon", "coordinates": [ring]} for ring in rings]
    features = [{"type": "Feature", "properties": {}, "geometry": g} for g in polygons]
    collection: dict = {"type": "FeatureCollection", "features": features}
    if crs:
        collection["crs"] = {"type": "name", "properties": {"name": crs}}
    path = tmp_path / "aoi.geojson"
    path.write_text(json.dumps(collection))
    try:
        aoi = load_aoi(path)
        tiles = split_aoi(aoi, tile_size_m, 0.2, "fuzz", max_tiles=5000)  # the cap's check, not the splitter's speed
    except ConfigError as exc:
        assert str(path) in str(exc) or "the AOI spans about" in str(exc), exc
        return
    assert tiles and all(t.core[2] - t.core[0] == tile_size_m for t in tiles)


@settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture], **QUIET)
@given(raw=st.binary(max_size=300), suffix=st.sampled_from([".geojson", ".gpkg", ".json", ".shp"]))
def test_fuzzed_aoi_bytes_name_the_file(tmp_path, raw, suffix):
    path = tmp_path / f"aoi{suffix}"
    path.write_bytes(raw)
    with pytest.raises(ConfigError, match=str(path)):
        load_aoi(path)


# EOPatches: every required feature present or not, of random shapes and dtypes, with NaN/inf, any timestamps
_dtypes = st.sampled_from([np.float32, np.float64, np.uint16, np.int8, np.bool_, np.complex64])
_shape = st.lists(st.integers(0, 5), min_size=1, max_size=5).map(tuple)


@st.composite
def _patches(draw) -> EOPatch:
    """An EOPatch near the contract: the right shapes mostly, a random one sometimes; NaN/inf; odd timestamps."""
    t, h, w, tv = draw(st.integers(0, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 2))
    right = {"S2": (t, h, w, 4), "S2m": (t, h, w, 1), "VHR": (tv, 4 * h, 4 * w, 4), "VHRm": (tv, 4 * h, 4 * w, 1)}
    patch = EOPatch(bbox=None)
    for feature, key, bool_ in ((S2_BANDS, "S2", 0), (S2_CLOUDS, "S2m", 1), (S2_VALID, "S2m", 1),
                                (VHR_BANDS, "VHR", 0), (VHR_VALID, "VHRm", 1)):  # fmt: skip
        kind = draw(st.sampled_from(["right", "right", "right", "shape", "dtype", "missing"]))
        if kind == "missing":
            continue
        shape = draw(_shape) if kind == "shape" else right[key]
        dtype = draw(_dtypes) if kind == "dtype" else (np.bool_ if bool_ else np.float32)
        value = draw(st.sampled_from([0.5, np.nan, np.inf, 1e30]))
        array = np.full(shape, value if not bool_ else True).astype(dtype) if len(shape) else np.zeros(())
        try:
            patch[feature] = array
        except ValueError:
            pass  # eo-learn refuses the shape itself: not a patch anyone can save
    stamps = st.sampled_from(["2016-06-01", "2016-06-01T10:00:00", "yesterday", "", "2016-02-30"])
    patch.timestamps = [dt.datetime(2016, 5, 1) + dt.timedelta(days=i) for i in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):
        patch.meta_info[VHR_TIMESTAMPS] = draw(st.one_of(st.lists(stamps, max_size=3), st.integers(), st.none()))
    return patch


@FUZZ
@given(patch=_patches(), scale=st.sampled_from([4, 2]))
def test_fuzzed_eopatches_pass_the_check_or_name_the_tile(patch, scale):
    try:
        check_patch(patch, "32618_440_4164", scale)
    except TileError as exc:
        assert str(exc).startswith("tile 32618_440_4164: ") and "re-run" in str(exc), exc
        return
    except SrpipeError as exc:  # pragma: no cover - the check's errors are TileErrors
        raise AssertionError(f"not a TileError: {exc!r}") from exc
    s2, vhr = patch[S2_BANDS], patch[VHR_BANDS]
    assert s2.shape[-1] == 4 and vhr.shape[1] == scale * s2.shape[1]

"""The `stac` source: Sentinel-2 L2A from STAC archives of COGs (Earth Search, Planetary Computer, CDSE, or a static
catalog), no account needed; labels from the user's own rasters (`source.vhr_files` or the items of `source.vhr_stac`,
see `sources.vhr`).

Per tile: the items over its box in `time_interval` with cloud cover <= `s2_max_cloud_cover` (`stac.search`); B02, B03,
B04, B08 and SCL read as windowed COG reads onto its grid (`cogread`; reprojected when the item's UTM zone differs);
items of one day mosaicked; DN to reflectance with each item's own units (`item_units`); a dark-object check across
the tile's dates warns where an item's offset metadata looks wrong.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from eolearn.core import EOPatch, FeatureType
from rasterio.warp import transform_bounds

from srpipe import eopatch as ep
from srpipe.config import ConfigError, SourceConfig
from srpipe.data.grid import Tile
from srpipe.errors import TileError
from srpipe.sources.cogread import CogReadError, read_item
from srpipe.sources.sentinelhub.cost import SAMPLE_TILES, spread
from srpipe.sources.stac.cost import StacEstimate, asset_cost
from srpipe.sources.stac.search import S2Item, search_items
from srpipe.sources.stac.sign import Signer, check_sign_settings, signer_for
from srpipe.sources.stack import EOPatchSource
from srpipe.sources.vhr.collection import label_rasters
from srpipe.sources.vhr.files import VhrFiles

S2_RESOLUTION_M = 10.0
QUANTIFICATION = 10000.0  # S2 DN per unit reflectance
BASELINE_OFFSET = -0.1  # processing baseline 04.00 and later: reflectance = DN / 10000 - 0.1 (BOA/RADIO_ADD_OFFSET)
NODATA_SCL = (0, 1)  # SCL no data, saturated or defective
DARK_PERCENTILE = 2.0  # the dark-object statistic: this percentile of a date's clear pixels, mean over bands
DARK_WARN = 0.06  # reflectance: a date this far from its neighbours' median suspects a wrong offset (0.1)
S2_ITEMS = "s2_items"  # meta_info: the item ids of each S2 date


@dataclass(frozen=True)
class ItemUnits:
    """reflectance = DN * scale + offset for one item's four bands; `why` says where the offset came from."""

    scale: float
    offset: float
    why: str


def item_units(item: S2Item, asset_keys: tuple[str, ...]) -> ItemUnits:
    """The item's units: `earthsearch:boa_offset_applied` true means the archive took the offset out of the DN;
    else the raster extension's scale/offset of its B02 asset; else the processing baseline (04.00 on: -0.1)."""
    props = item.raw["properties"]
    bands = item.raw["assets"][asset_keys[0]].get("raster:bands") or [{}]
    scale = float(bands[0].get("scale", 1 / QUANTIFICATION))
    baseline = str(props.get("s2:processing_baseline", ""))
    if props.get("earthsearch:boa_offset_applied") is True:
        return ItemUnits(scale, 0.0, "earthsearch:boa_offset_applied = true: the DN carry no offset")
    if "offset" in bands[0]:
        return ItemUnits(scale, float(bands[0]["offset"]), "the item's raster:bands offset")
    if baseline and float(baseline) >= 4.0:
        return ItemUnits(scale, BASELINE_OFFSET, f"s2:processing_baseline {baseline}: offset -1000 DN")
    return ItemUnits(scale, 0.0, f"s2:processing_baseline {baseline or 'unknown'}: no offset")


def dark_object_outliers(dark: list[float]) -> list[int]:
    """Indexes of dates whose dark-object statistic (reflectance) lies > DARK_WARN from the others' median."""
    if len(dark) < 3:
        return []
    out = []
    for i, value in enumerate(dark):
        others = np.median([d for j, d in enumerate(dark) if j != i and np.isfinite(d)])
        if np.isfinite(value) and abs(value - others) > DARK_WARN:
            out.append(i)
    return out


def dark_statistic(bands: np.ndarray, clear: np.ndarray) -> float:
    """The DARK_PERCENTILE percentile of (H, W, 4) reflectance over (H, W) `clear` pixels, mean over bands."""
    if clear.sum() < 16:
        return float("nan")
    return float(np.mean(np.percentile(bands[clear], DARK_PERCENTILE, axis=0)))


def check_settings(cfg: SourceConfig) -> None:
    """Raise ConfigError naming the key when a stac setting is missing or out of range."""
    if bool(cfg.stac_api) == bool(cfg.stac_catalog):
        raise ConfigError(
            "the stac source needs exactly one of 'source.stac_api' (a STAC API root, e.g. "
            "https://earth-search.aws.element84.com/v1) and 'source.stac_catalog' (a static catalog.json)"
        )
    if len(cfg.stac_assets) != 5:
        raise ConfigError(
            f"config key 'source.stac_assets' needs 5 keys (B02, B03, B04, B08, SCL), got {cfg.stac_assets}"
        )
    if not 0 <= cfg.s2_max_cloud_cover <= 1:
        raise ConfigError(f"config key 'source.s2_max_cloud_cover' must be in [0, 1], got {cfg.s2_max_cloud_cover}")
    if cfg.max_retries < 0 or cfg.timeout_s <= 0 or cfg.retry_base_s <= 0:
        raise ConfigError("config keys 'source.max_retries' (>= 0), 'source.timeout_s' and 'retry_base_s' (> 0)")
    check_sign_settings(cfg)


def tile_box_wgs84(tile: Tile) -> tuple[float, float, float, float]:
    """The tile's buffered box in EPSG:4326 (lon/lat)."""
    return transform_bounds(f"EPSG:{tile.epsg}", "EPSG:4326", *tile.bounds, densify_pts=21)


class StacSource(EOPatchSource):
    """EOPatches from a STAC archive and label files (see the module docstring); `cache_dir` holds the responses."""

    paid = False
    remote = True

    def __init__(self, cfg: SourceConfig, cache_dir: Path | None = None, run_dir: Path | None = None) -> None:
        if not cfg.lr_resolution_m:
            cfg = dataclasses.replace(cfg, lr_resolution_m=S2_RESOLUTION_M)
        check_settings(cfg)
        self.cfg, self.cache_dir, self.run_dir = cfg, cache_dir, run_dir
        self.has_labels = bool(cfg.label_rasters)

    @cached_property
    def signer(self) -> Signer:
        """What every S2 asset href goes through before it is read (`source.stac_sign`)."""
        return signer_for(self.cfg)

    @cached_property
    def labels(self) -> VhrFiles:
        """The label rasters of `vhr_files` or `vhr_stac` (listed and dated once)."""
        return label_rasters(self.cfg)

    def describe(self) -> str:
        """The source in a few words."""
        where = self.cfg.stac_api or self.cfg.stac_catalog
        labels = f" with the labels of {self.cfg.label_rasters}" if self.has_labels else ""
        return f"the STAC archive {where} ({self.cfg.stac_collection}){labels}"

    def coverage(self, aoi: shapely.Geometry) -> gpd.GeoSeries:
        """Where S2 items (and label files, when set) lie over `aoi`, EPSG:4326."""
        items = search_items(self.cfg, aoi.bounds, self.cache_dir)
        covered = shapely.union_all([i.footprint for i in items] or [shapely.Polygon()])
        if self.has_labels:
            covered = covered.intersection(self.labels.footprint().iloc[0])
        return gpd.GeoSeries([covered], crs=4326)

    def estimate(self, tiles: list[Tile]) -> str:
        """HTTP range requests and bytes of downloading `tiles`, items searched on a few of them."""
        source = StacSource(self.cfg)  # without the run's cache: an estimate writes nothing
        sampled = spread(tiles, SAMPLE_TILES)
        found = [source.items(t) for t in sampled]
        items = sum(map(len, found)) / max(len(found), 1)
        first = next(((t, i[0]) for t, i in zip(sampled, found, strict=True) if i), None)
        requests, size = (
            (0, 0)
            if first is None
            else asset_cost(first[1].hrefs[0], first[0], source.cfg.lr_resolution_m, source.cfg, source.signer)
        )
        return StacEstimate(len(tiles), len(sampled), items, len(self.cfg.stac_assets), requests, size).line()

    def radiometric_offset(self, date: dt.date) -> tuple[int, str]:
        """No offset: each item's own offset is taken out at download (recorded in the EOPatch)."""
        return 0, "stac source: reflectance from each item's scale and offset, written without offset"

    def items(self, tile: Tile) -> list[S2Item]:
        """The S2 items meeting `tile`'s box, by time."""
        box = shapely.box(*tile_box_wgs84(tile))
        return [i for i in search_items(self.cfg, tile_box_wgs84(tile), self.cache_dir) if i.footprint.intersects(box)]

    def fetch(self, tile: Tile) -> EOPatch:
        """The tile's EOPatch: S2 at lr_resolution_m (reflectance), labels at lr_resolution_m / scale."""
        items = self.items(tile)
        days, frames, skipped = self._frames(tile, items)
        if not days:
            raise TileError(
                tile.tile_id,
                f"no readable {self.cfg.stac_collection} item in {self.cfg.time_interval} with cloud cover <= "
                f"'source.s2_max_cloud_cover' {self.cfg.s2_max_cloud_cover} ({len(items)} found, "
                f"{len(skipped)} unreadable); widen either",
            )
        bands = np.stack([f[0] for f in frames])
        clouds, valid = np.stack([f[1] for f in frames]), np.stack([f[2] for f in frames])
        suspects = self._dark_check(tile, days, bands, valid & ~clouds, frames)
        h, w = bands.shape[1:3]
        s = self.cfg.scale
        if self.has_labels:
            vhr_days, labels, vhr_valid = self.labels.read(tile, self.cfg.lr_resolution_m / s)
        else:
            vhr_days, labels, vhr_valid = (
                [],
                np.zeros((0, s * h, s * w, 4), np.float32),
                np.zeros((0, s * h, s * w, 1), bool),
            )
        patch = EOPatch(bbox=tile.bbox, timestamps=[dt.datetime.combine(d, dt.time()) for d in days])
        patch[ep.S2_BANDS] = np.where(valid[..., None], bands, np.nan).astype(np.float32)
        patch[ep.S2_CLOUDS] = clouds[..., None]
        patch[ep.S2_VALID] = valid[..., None]
        patch[ep.VHR_BANDS] = labels
        patch[ep.VHR_VALID] = vhr_valid
        meta = {
            ep.VHR_TIMESTAMPS: [dt.datetime.combine(d, dt.time()).isoformat() for d in vhr_days],
            "tile_id": tile.tile_id,
            "source": f"stac:{self.cfg.stac_api or self.cfg.stac_catalog}#{self.cfg.stac_collection}",
            "lr_resolution_m": self.cfg.lr_resolution_m,
            "hr_resolution_m": self.cfg.lr_resolution_m / s,
            S2_ITEMS: [f[3] for f in frames],
            "s2_offsets": [f[4] for f in frames],
            "s2_offset_origins": [f[5] for f in frames],
            "s2_skipped_items": skipped,
            "s2_offset_suspects": suspects,
            "vhr_files": [h for d in vhr_days for h in self._label_hrefs(tile, d)],
            "vhr_gain": list(self.cfg.vhr_gain),
            "vhr_bias": list(self.cfg.vhr_bias),
        }
        for key, value in meta.items():
            patch[FeatureType.META_INFO, key] = value
        return patch

    def _label_hrefs(self, tile: Tile, day: dt.date) -> list[str]:
        """The label rasters (paths or URLs) of `day` over `tile`."""
        return [f.href for f in self.labels.over(tile).get(day, [])]

    def _frames(self, tile: Tile, items: list[S2Item]) -> tuple[list[dt.date], list[tuple], list[str]]:
        """(days, per day (bands (H, W, 4), clouds, valid, item ids, offsets, why), unreadable items' ids)."""
        by_day: dict[dt.date, list[S2Item]] = {}
        for item in items:
            by_day.setdefault(item.datetime.date(), []).append(item)
        days, frames, skipped = [], [], []
        for day, group in by_day.items():
            frame = self._day(tile, group, skipped)
            if frame is not None:
                days.append(day)
                frames.append(frame)
        return days, frames, skipped

    def _day(self, tile: Tile, group: list[S2Item], skipped: list[str]) -> tuple | None:
        """One day's mosaic of `group` (the first item with data wins a pixel); None when no pixel holds data."""
        bands = clouds = valid = None
        ids, offsets, whys = [], [], []
        for item in group:
            cache = self.cache_dir / "reads" / tile.tile_id / f"{item.id}.npz" if self.cache_dir else None
            try:
                dn, scl = read_item(item.hrefs, tile, self.cfg, cache, self.signer)
            except CogReadError as exc:
                warnings.warn(f"{exc}; item {item.id} left out", stacklevel=2)
                skipped.append(item.id)
                continue
            units = item_units(item, self.cfg.stac_assets)
            has = (dn > 0).all(axis=-1) & ~np.isin(scl, NODATA_SCL)
            if bands is None:
                bands, clouds, valid = (
                    np.zeros(dn.shape, np.float32),
                    np.zeros(has.shape, bool),
                    np.zeros(has.shape, bool),
                )
            take = has & ~valid
            bands[take] = dn[take] * np.float32(units.scale) + np.float32(units.offset)
            clouds[take] = np.isin(scl[take], self.cfg.stac_cloud_classes)
            valid |= has
            ids.append(item.id)
            offsets.append(units.offset)
            whys.append(units.why)
        if valid is None or not valid.any():
            return None
        return bands, clouds, valid, ids, offsets, whys

    def _dark_check(self, tile: Tile, days: list, bands: np.ndarray, clear: np.ndarray, frames: list) -> list[str]:
        """Warn for dates whose darkest clear pixels sit far from the other dates' (a wrong offset); their item ids."""
        dark = [dark_statistic(bands[t], clear[t]) for t in range(len(days))]
        suspects = []
        for t in dark_object_outliers(dark):
            others = float(np.nanmedian([d for j, d in enumerate(dark) if j != t]))
            suspects += frames[t][3]
            warnings.warn(
                f"tile {tile.tile_id}: S2 of {days[t]} (items {', '.join(frames[t][3])}) has its dark objects at "
                f"{dark[t]:.3f} reflectance, {dark[t] - others:+.3f} from the other dates' {others:.3f}: its offset "
                f"({frames[t][5][0]}) looks wrong; the archive's metadata may be wrong, check it",
                stacklevel=2,
            )
        return suspects

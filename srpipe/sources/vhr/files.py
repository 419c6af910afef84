"""VHR labels from the user's own rasters (`source.vhr_files`, or the items of `source.vhr_stac`, see `vhr.collection`):
GeoTIFF/COG/JP2 in any CRS and pixel size at or finer than the label grid, local or over HTTP (GDAL /vsicurl/), dated
from a file-name pattern or the TIFF DATETIME tag (or the item's datetime), mosaicked per date and area-averaged onto a
tile's label grid through GDAL's warper (rasterio WarpedVRT)."""

from __future__ import annotations

import datetime as dt
import glob
import re
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from pyproj import Geod, Transformer
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_geom

from srpipe.config import ConfigError, SourceConfig
from srpipe.data.grid import Tile
from srpipe.errors import TileError
from srpipe.sources.cogread import gdal_env

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")
_PATTERN_CODES = {"%Y": r"\d{4}", "%m": r"\d{2}", "%d": r"\d{2}", "%j": r"\d{3}", "%H": r"\d{2}", "%M": r"\d{2}"}


@dataclass(frozen=True)
class VhrFile:
    """One label raster: its href (a local path or an http(s) URL), acquisition date and footprint (EPSG:4326)."""

    href: str
    date: dt.date
    footprint: shapely.Geometry


def matching_files(spec: str) -> list[Path]:
    """The raster files of `source.vhr_files`: every raster in a folder, or the matches of a glob; sorted."""
    path = Path(spec)
    found = sorted(path.iterdir()) if path.is_dir() else sorted(Path(p) for p in glob.glob(spec, recursive=True))
    files = [p for p in found if p.suffix.lower() in RASTER_SUFFIXES and p.is_file()]
    if not files:
        raise ConfigError(
            f"config key 'source.vhr_files' = {spec!r} matches no GeoTIFF/COG/JP2 file; name a folder or a glob "
            "of the label rasters"
        )
    return files


def file_date(path: Path, tags: dict[str, str], pattern: str) -> dt.date:
    """The acquisition date of `path`: `pattern` (strptime codes) found in its name, else its TIFF DATETIME tag."""
    if pattern:
        regex = re.escape(pattern)
        for code, digits in _PATTERN_CODES.items():
            regex = regex.replace(re.escape(code), digits)
        match = re.search(regex, path.name)
        if match:
            return dt.datetime.strptime(match.group(0), pattern).date()
        raise ConfigError(
            f"label file {path}: its name holds no date of 'source.vhr_date_pattern' {pattern!r}; rename it or fix "
            "the pattern"
        )
    stamp = tags.get("TIFFTAG_DATETIME") or tags.get("ACQUISITIONDATETIME") or ""
    match = re.match(r"(\d{4})[:-](\d{2})[:-](\d{2})", stamp)
    if not match:
        raise ConfigError(
            f"label file {path} has no TIFFTAG_DATETIME tag; set 'source.vhr_date_pattern' (e.g. \"%Y-%m-%d\") "
            "to read the date from the file names"
        )
    return dt.date(*map(int, match.groups()))


def _pixel_m(src: rasterio.DatasetReader) -> float:
    """The coarser side on the ground, in metres, of `src`'s centre pixel (geodesic: any CRS, Web Mercator too)."""
    cx, cy = (src.bounds.left + src.bounds.right) / 2, (src.bounds.bottom + src.bounds.top) / 2
    dx, dy = abs(src.res[0]), abs(src.res[1])
    lon, lat = Transformer.from_crs(src.crs, 4326, always_xy=True).transform([cx, cx + dx, cx], [cy, cy, cy + dy])
    geod = Geod(ellps="WGS84")
    return max(geod.inv(lon[0], lat[0], lon[1], lat[1])[2], geod.inv(lon[0], lat[0], lon[2], lat[2])[2])


def describe_file(path: Path, pattern: str) -> VhrFile:
    """Open `path` once (its header only) and record its date and footprint."""
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise ConfigError(f"label file {path} has no CRS; georeference it (gdal_edit.py -a_srs ...)")
            box = shapely.box(*src.bounds).segmentize(max(src.bounds[2] - src.bounds[0], 1e-9) / 16)
            footprint = shapely.geometry.shape(transform_geom(src.crs, "EPSG:4326", shapely.geometry.mapping(box)))
            return VhrFile(str(path), file_date(path, src.tags(), pattern), footprint)
    except rasterio.RasterioIOError as exc:
        raise ConfigError(f"label file {path} cannot be read ({exc}); replace it or leave it out") from exc


class VhrFiles:
    """The label rasters in the label interval (`vhr_time_interval`, else `time_interval`): `files` when given (with
    `origin`, the setting that listed them, for messages), else those of `cfg.vhr_files`."""

    def __init__(self, cfg: SourceConfig, files: list[VhrFile] | None = None, origin: str = "") -> None:
        for key in ("vhr_file_bands", "vhr_gain", "vhr_bias"):
            if len(getattr(cfg, key)) != 4:
                raise ConfigError(f"config key 'source.{key}' needs 4 values (blue, green, red, NIR)")
        interval = cfg.vhr_time_interval if all(cfg.vhr_time_interval) else cfg.time_interval
        start, end = (dt.date.fromisoformat(d[:10]) for d in interval)
        if files is None:
            files = [describe_file(p, cfg.vhr_date_pattern) for p in matching_files(cfg.vhr_files)]
            origin = f"'source.vhr_files' ({cfg.vhr_files})"
        self.cfg, self.origin = cfg, origin
        self.files = [f for f in files if start <= f.date <= end]

    def footprint(self) -> gpd.GeoSeries:
        """The union of the files' footprints, EPSG:4326."""
        return gpd.GeoSeries([shapely.union_all([f.footprint for f in self.files] or [shapely.Polygon()])], crs=4326)

    def over(self, tile: Tile) -> dict[dt.date, list[VhrFile]]:
        """The files meeting `tile`'s box, by date (sorted)."""
        box = shapely.geometry.shape(
            transform_geom(f"EPSG:{tile.epsg}", "EPSG:4326", shapely.geometry.mapping(shapely.box(*tile.bounds)))
        )
        by_date: dict[dt.date, list[VhrFile]] = {}
        for f in self.files:
            if f.footprint.intersects(box):
                by_date.setdefault(f.date, []).append(f)
        return dict(sorted(by_date.items()))

    def read(self, tile: Tile, resolution_m: float) -> tuple[list[dt.date], np.ndarray, np.ndarray]:
        """(dates, (T, H, W, 4) float32 labels = value * gain + bias, (T, H, W, 1) bool valid) on the tile's grid."""
        groups = self.over(tile)
        if not groups:
            raise TileError(
                tile.tile_id,
                f"no label file of {self.origin} covers the tile in the label interval; re-plan (plan drops tiles "
                "outside the labels' footprint)",
            )
        stacks = [self._mosaic(tile, files, resolution_m) for files in groups.values()]
        return list(groups), np.stack([s[0] for s in stacks]), np.stack([s[1] for s in stacks])

    def _mosaic(self, tile: Tile, files: list[VhrFile], resolution_m: float) -> tuple[np.ndarray, np.ndarray]:
        """One date: ((H, W, 4) labels, (H, W, 1) valid), the first file with data winning each pixel."""
        width, height = (
            round((tile.bounds[2] - tile.bounds[0]) / resolution_m),
            round((tile.bounds[3] - tile.bounds[1]) / resolution_m),
        )
        image = np.zeros((height, width, 4), np.float32)
        valid = np.zeros((height, width), bool)
        for f in files:
            remote = "://" in f.href  # local files keep GDAL's sidecar lookup (.aux.xml, world files)
            with rasterio.Env(**(gdal_env(self.cfg) if remote else {})):
                values, mask = _warp(f.href, tile, resolution_m, self.cfg.vhr_file_bands)
            take = mask & ~valid
            image[take] = values[take]
            valid |= mask
        image = image * np.float32(self.cfg.vhr_gain) + np.float32(self.cfg.vhr_bias)
        return np.where(valid[..., None], image, 0).astype(np.float32), valid[..., None]


def _warp(href: str, tile: Tile, resolution_m: float, bands: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """((H, W, 4) float32 area averages of `bands` of `href` on the tile's `resolution_m` grid, (H, W) bool: wholly
    inside its valid data); TileError when its pixels are coarser than the grid's."""
    width = round((tile.bounds[2] - tile.bounds[0]) / resolution_m)
    height = round((tile.bounds[3] - tile.bounds[1]) / resolution_m)
    transform = from_bounds(*tile.bounds, width, height)
    with rasterio.open(href) as src:
        pixel_m = _pixel_m(src)
        if pixel_m > resolution_m * 1.01:
            raise TileError(
                tile.tile_id,
                f"label file {href} has {pixel_m:.2f} m pixels, coarser than the {resolution_m:g} m label grid; use "
                "finer imagery or a larger 'source.lr_resolution_m'",
            )
        missing = [b for b in bands if not 1 <= b <= src.count]
        if missing:
            raise ConfigError(
                f"label file {href} has {src.count} bands; 'source.vhr_file_bands' asks for band(s) {missing}"
            )
        with WarpedVRT(
            src, crs=f"EPSG:{tile.epsg}", transform=transform, width=width, height=height, resampling=Resampling.average
        ) as vrt:
            values = vrt.read(list(bands), out_dtype="float32")
            mask = vrt.read_masks(list(bands)).min(axis=0) == 255  # GDAL's average: 255 where all parts hold data
    return np.moveaxis(values, 0, -1), mask

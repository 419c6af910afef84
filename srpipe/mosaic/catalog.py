"""Catalog: per date a VRT over its zone mosaics, optionally one COG reprojected into `mosaic.crs`, and the STAC
collection of them all (`srpipe.mosaic.stac_collection`); each with its spread twin where the zones have one."""

from __future__ import annotations

import collections
import math
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import rasterio
import rasterio.shutil
from affine import Affine
from pyproj import CRS
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from srpipe import BANDS, state, twin_bands
from srpipe.config import Config
from srpipe.data.cog import cog_writer
from srpipe.data.s2units import QUANTIFICATION_VALUE
from srpipe.errors import StageError
from srpipe.mosaic.stac_collection import write_collection
from srpipe.mosaic.stage import GDAL_CACHE_BYTES, SPREAD_CONTENT, blocks, validate_cog

RESAMPLING = Resampling.bilinear  # zones warped into another CRS (the date VRT, the reprojected mosaic)
_METRES_PER_DEGREE = 111_320.0  # of latitude: a geographic target CRS gets the same pixel size north-south


def catalog(cfg: Config) -> dict:
    """Per date a VRT over its zone mosaics (and a COG reprojected into `mosaic.crs` if set); the STAC collection."""
    mosaics = [m for r in state.done_records(cfg.run_path, "mosaic").values() for m in r.get("mosaics", [])]
    mosaics = [m for m in mosaics if Path(m["path"]).exists()]
    if not mosaics:
        raise StageError("catalog: no zone mosaic is done; run `srpipe mosaic` first")
    by_date: dict[str, list[dict]] = collections.defaultdict(list)
    for m in mosaics:
        by_date[m["date"]].append(m)
    dates = {}
    for date, zones in sorted(by_date.items()):
        vrt = date_vrt(cfg, date, zones)
        dates[date] = {"vrt": str(vrt)}
        if cfg.mosaic.crs:
            dates[date] |= reproject(cfg, date, vrt)
        if all("spread" in m for m in zones):
            dates[date] |= _date_spread(cfg, date, zones)
    stac = write_collection(cfg, mosaics, dates)
    return {"dates": dates, "stac": str(stac), "items": len(mosaics)}


def _date_spread(cfg: Config, date: str, zones: list[dict]) -> dict:
    """The spread twins of one date's VRT and reprojected mosaic: {"spread_vrt", "spread_reprojected", ...}."""
    spreads = [{**m, "path": m["spread"], "dtype": "float32", "offset_dn": 0} for m in zones]
    vrt = date_vrt(cfg, date, spreads, spread=True)
    out = {"spread_vrt": str(vrt)}
    if cfg.mosaic.crs:
        out |= {f"spread_{k}": v for k, v in reproject(cfg, date, vrt, spread=True).items()}
    return out


def _target_crs(cfg: Config, zones: list[dict]) -> CRS:
    """The date VRT's CRS: `mosaic.crs`, else the zone with the most pixels (it needs no warping)."""
    if cfg.mosaic.crs:
        return CRS.from_user_input(cfg.mosaic.crs)
    biggest = max(zones, key=lambda m: (m["shape"][0] * m["shape"][1], -m["epsg"]))
    return CRS.from_epsg(biggest["epsg"])


def date_vrt(cfg: Config, date: str, zones: list[dict], spread: bool = False) -> Path:
    """Write `layout.date_vrt`: one date's zone mosaics in one CRS (other zones warped by VRTs of their own);
    `spread`: the spread twins' (`zones`' "path" then names them)."""
    crs = _target_crs(cfg, zones)
    sources = []  # (path, transform, width, height) on the date's grid, the biggest zone last: it wins overlaps
    for m in sorted(zones, key=lambda m: m["shape"][0] * m["shape"][1]):
        with rasterio.open(m["path"]) as src:
            if CRS.from_user_input(src.crs.to_wkt()) == crs:
                sources.append((Path(m["path"]), src.transform, src.width, src.height))
            else:
                sources.append(_warped_vrt(src, crs, _warped_path(cfg, date, m["epsg"], crs, spread)))
    res = sources[-1][1].a
    minx = min(t.c for _, t, _, _ in sources)
    maxy = max(t.f for _, t, _, _ in sources)
    maxx = max(t.c + w * t.a for _, t, w, _ in sources)
    miny = min(t.f + h * t.e for _, t, _, h in sources)
    transform = Affine(res, 0.0, minx, 0.0, -res, maxy)
    width, height = round((maxx - minx) / res), round((maxy - miny) / res)
    path = cfg.layout.date_vrt(cfg.plan.region, date, spread)
    bands = twin_bands(cfg.infer.interval_levels) if spread else BANDS
    _write_vrt(path, crs, transform, width, height, sources, zones[0]["dtype"], zones[0]["offset_dn"], bands)
    return path


def _warped_path(cfg: Config, date: str, epsg: int, crs: CRS, spread: bool) -> Path:
    """`mosaics/<region>_<date>_<epsg>.<CRS>[.std].vrt`: one zone's mosaic warped into the date VRT's CRS."""
    return cfg.layout.warped_zone_vrt(cfg.plan.region, date, epsg, crs.to_string(), spread)


def _warped_vrt(src: DatasetReader, crs: CRS, path: Path) -> tuple[Path, Affine, int, int]:
    """Write a warped VRT of `src` in `crs` on a grid snapped to its pixel size; (path, transform, width, height)."""
    bounds = transform_bounds(src.crs, crs, *src.bounds, densify_pts=64)
    metres = crs.is_projected and crs.axis_info[0].unit_name == "metre"
    res = src.res[0] if metres else src.res[0] / _METRES_PER_DEGREE
    minx, miny = math.floor(bounds[0] / res) * res, math.floor(bounds[1] / res) * res
    maxx, maxy = math.ceil(bounds[2] / res) * res, math.ceil(bounds[3] / res) * res
    transform = Affine(res, 0.0, minx, 0.0, -res, maxy)
    width, height = round((maxx - minx) / res), round((maxy - miny) / res)
    with (
        WarpedVRT(src, crs=crs, transform=transform, width=width, height=height, resampling=RESAMPLING) as vrt,
        state.atomic_path(path) as tmp,
    ):
        rasterio.shutil.copy(vrt, tmp, driver="VRT")  # GDAL's own VRTWarpedDataset XML, its source relative to it
    return path, transform, width, height


def _write_vrt(
    path: Path,
    crs: CRS,
    transform: Affine,
    width: int,
    height: int,
    sources: list[tuple[Path, Affine, int, int]],
    dtype: str,
    offset_dn: int,
    descriptions: tuple[str, ...] = BANDS,
) -> None:
    """A VRT mosaic of `sources` on one grid, nodata transparent (hand-written XML: rasterio has no VRT builder)."""
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in transform.to_gdal())
    nodata = "0" if dtype == "uint16" else "nan"
    for b, name in enumerate(descriptions, start=1):
        band = ET.SubElement(root, "VRTRasterBand", dataType="UInt16" if dtype == "uint16" else "Float32", band=str(b))
        ET.SubElement(band, "Description").text = name
        ET.SubElement(band, "NoDataValue").text = nodata
        if dtype == "uint16":
            ET.SubElement(band, "Offset").text = repr(offset_dn / QUANTIFICATION_VALUE)
            ET.SubElement(band, "Scale").text = repr(1 / QUANTIFICATION_VALUE)
        for src_path, src_transform, w, h in sources:
            source = ET.SubElement(band, "ComplexSource")
            ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = os.path.relpath(src_path, path.parent)
            ET.SubElement(source, "SourceBand").text = str(b)
            col = round((src_transform.c - transform.c) / transform.a)
            row = round((src_transform.f - transform.f) / transform.e)
            for tag, (x, y) in (("SrcRect", (0, 0)), ("DstRect", (col, row))):
                ET.SubElement(source, tag, xOff=str(x), yOff=str(y), xSize=str(w), ySize=str(h))
            ET.SubElement(source, "NODATA").text = nodata
    ET.indent(root)
    state.write_text(path, ET.tostring(root, encoding="unicode"))


def reproject(cfg: Config, date: str, vrt: Path, spread: bool = False) -> dict:
    """Write `layout.reprojected_mosaic`: the date VRT (in `mosaic.crs`) as one COG, warped block by block
    (`spread`: the spread twin's, from the spread VRT)."""
    out = cfg.layout.reprojected_mosaic(cfg.plan.region, date, cfg.mosaic.crs, spread)
    start = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), rasterio.open(vrt) as src:
        dtype, offset_dn = src.dtypes[0], round((src.offsets[0] or 0) * QUANTIFICATION_VALUE)
        tags = {"date": date, "model": cfg.prediction_model} | ({"content": SPREAD_CONTENT} if spread else {})
        with cog_writer(
            out,
            src.width,
            src.height,
            src.transform,
            src.crs.to_wkt(),
            cfg.mosaic,
            tags,
            dtype,
            offset_dn,
            tuple(src.descriptions),
        ) as dst:
            for window in blocks(src.width, src.height, cfg.mosaic.blocksize):
                dst.write(src.read(window=window), window=window)
    warnings = validate_cog(out)
    return {"reprojected": str(out), "reprojected_warnings": warnings, "seconds": round(time.perf_counter() - start, 2)}

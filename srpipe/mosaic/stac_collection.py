"""STAC 1.1 of a run's mosaics: one collection, one item per (UTM zone, date) COG, in `mosaics/stac/`.

Items carry STAC 1.1 `bands` (name, eo:common_name, nodata, data_type, raster:scale/offset and the 2.5 m
raster:spatial_resolution: `gsd` describes a sensor, not a product), the projection extension, processing:software
(srpipe and the model's content hash), derived_from links to the S2 acquisitions read, and the AOI-clipped footprint.
With `infer.uncertainty` an item has a second asset, "spread": the self-ensemble's per-pixel std (roles data and
uncertainty, float32 reflectance units, NaN nodata), so a user can mask the SR pixels not to trust; with
`infer.interval` the asset also holds each level's calibrated half-width (bands `<band>_hwNN`, the level and the
calibration in `srpipe:interval_levels` and `srpipe:interval_calibration`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pystac
import shapely
import shapely.geometry
from pystac.extensions.projection import ProjectionExtension

import srpipe
from srpipe import BANDS, state, twin_bands
from srpipe.config import Config
from srpipe.data.s2units import QUANTIFICATION_VALUE
from srpipe.weights import inference_weights

EXTENSIONS = {  # the STAC 1.1 versions of the extensions used
    "eo": "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "raster": "https://stac-extensions.github.io/raster/v2.0.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
}
COMMON_NAMES = {"B02": ("blue", 0.492), "B03": ("green", 0.560), "B04": ("red", 0.665), "B08": ("nir", 0.833)}
SPREAD_ROLES = ["data", "uncertainty"]  # no best-practice role names an uncertainty layer: "data" plus the plain word
S2_ITEMS = "https://stac.dataspace.copernicus.eu/v1/collections/sentinel-2-{level}/items"  # Copernicus Data Space


def write_collection(cfg: Config, mosaics: list[dict], dates: dict[str, dict]) -> Path:
    """Write the collection of `mosaics` (zone mosaics' info) with each date's VRT and reprojected COG as assets."""
    software = {"srpipe": srpipe.__version__, f"srpipe-model:{cfg.prediction_model}": _model_version(cfg)}
    items = [_item(cfg, m, software) for m in sorted(mosaics, key=lambda m: (m["date"], m["epsg"]))]
    boxes = [item.bbox for item in items if item.bbox]
    west, south = min(b[0] for b in boxes), min(b[1] for b in boxes)
    east, north = max(b[2] for b in boxes), max(b[3] for b in boxes)
    times = [t for item in items for t in (item.common_metadata.start_datetime, item.common_metadata.end_datetime)]
    collection = pystac.Collection(
        id=f"srpipe-{cfg.plan.region}",
        title=f"{cfg.plan.region}: Sentinel-2 B02, B03, B04, B08 super-resolved 4x",
        description=(
            f"4x super-resolved Sentinel-2 (B02, B03, B04, B08) of {cfg.plan.region} by srpipe "
            f"{srpipe.__version__} with model {cfg.prediction_model}: one COG per UTM zone and date"
        ),
        extent=pystac.Extent(
            pystac.SpatialExtent([[west, south, east, north]]),
            pystac.TemporalExtent([[min(times), max(times)]]),
        ),
        license="other",
        stac_extensions=[EXTENSIONS["processing"]],
        providers=[  # the processing extension puts a collection's processing fields on its processor
            pystac.Provider(
                "srpipe", roles=[pystac.ProviderRole.PROCESSOR], extra_fields={"processing:software": software}
            )
        ],
    )
    for date, outputs in sorted(dates.items()):  # relative to collection.json in mosaics/stac/
        vrt = pystac.Asset(f"../{Path(outputs['vrt']).name}", f"{date}, every zone", media_type="application/xml")
        collection.add_asset(f"vrt-{date}", vrt)
        if "reprojected" in outputs:
            href, title = f"../{Path(outputs['reprojected']).name}", f"{date} in {cfg.mosaic.crs}"
            collection.add_asset(f"{cfg.mosaic.crs}-{date}", pystac.Asset(href, title, media_type=pystac.MediaType.COG))
        _add_date_spread(collection, cfg, date, outputs)
    for item in items:
        collection.add_item(item)
    with state.atomic_path(cfg.layout.stac) as tmp:  # self-contained (relative links): the folder renames whole
        collection.normalize_hrefs(f"{tmp}/")  # the slash: pystac takes a last name with a dot for a file
        collection.make_all_asset_hrefs_relative()  # tmp lies beside stac/: the links hold after the rename
        collection.save(pystac.CatalogType.SELF_CONTAINED)
    return cfg.layout.stac / "collection.json"


def _add_date_spread(collection: pystac.Collection, cfg: Config, date: str, outputs: dict) -> None:
    """Add one date's spread VRT and reprojected spread COG (when catalog wrote them) as collection assets."""
    if "spread_vrt" in outputs:
        href, title = f"../{Path(outputs['spread_vrt']).name}", f"{date}, every zone: ensemble spread"
        asset = pystac.Asset(href, title, media_type="application/xml", roles=SPREAD_ROLES)
        collection.add_asset(f"spread-vrt-{date}", asset)
    if "spread_reprojected" in outputs:
        href, title = f"../{Path(outputs['spread_reprojected']).name}", f"{date} in {cfg.mosaic.crs}: ensemble spread"
        asset = pystac.Asset(href, title, media_type=pystac.MediaType.COG, roles=SPREAD_ROLES)
        collection.add_asset(f"spread-{cfg.mosaic.crs}-{date}", asset)


def _item(cfg: Config, m: dict, software: dict[str, str]) -> pystac.Item:
    """The item of one zone mosaic (`m`: its info from `srpipe.mosaic.stage.mosaic_zone`)."""
    geometry = shapely.geometry.shape(m["footprint"])
    date = dt.date.fromisoformat(m["date"])
    first = min((dt.date.fromisoformat(d) for d in m["input_dates"]), default=date)
    item = pystac.Item(
        Path(m["path"]).stem,
        shapely.geometry.mapping(geometry),
        list(geometry.bounds) if not geometry.is_empty else None,
        None,
        {
            "processing:software": software,
            "processing:lineage": (
                f"the {len(m['input_dates'])} Sentinel-2 acquisitions linked as derived_from, super-resolved 4x per "
                "tile, tile cores mosaicked on the UTM zone's grid, nodata outside the area of interest"
            ),
            "srpipe:tiles": m["tiles"],
            "srpipe:missing_tiles": m["missing"],
            "srpipe:input_dates": m["input_dates"],
        },
        start_datetime=_utc(first, dt.time()),
        end_datetime=_utc(date, dt.time(23, 59, 59)),
        stac_extensions=list(EXTENSIONS.values()),
    )
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.code, proj.shape, proj.transform = f"EPSG:{m['epsg']}", list(m["shape"]), list(m["transform"])
    proj.bbox = _proj_bbox(m)
    asset = pystac.Asset(
        str(Path(m["path"]).resolve()), f"{m['date']}, EPSG:{m['epsg']}", media_type=pystac.MediaType.COG
    )
    asset.roles = ["data"]
    asset.extra_fields["bands"] = _bands(m)
    item.add_asset("data", asset)
    if "spread" in m:
        item.add_asset("spread", _spread_asset(m))
    level = "l2a" if cfg.source.s2_collection == "l2a" else "l1c"
    for d in m["input_dates"]:
        query = f"?datetime={d}T00:00:00Z/{d}T23:59:59Z&bbox={','.join(f'{v:.5f}' for v in geometry.bounds)}"
        href = S2_ITEMS.format(level=level) + query
        title = f"Sentinel-2 {level.upper()} of {d} ({cfg.source.name} source)"
        item.add_link(pystac.Link("derived_from", href, pystac.MediaType.GEOJSON, title))
    return item


def _bands(m: dict) -> list[dict]:
    """STAC 1.1 `bands` of a mosaic: reflectance = DN * raster:scale + raster:offset (uint16, nodata 0)."""
    integer = m["dtype"] == "uint16"
    scale = 1 / QUANTIFICATION_VALUE if integer else 1.0
    bands = []
    for name in BANDS:
        common, wavelength_um = COMMON_NAMES[name]
        bands.append(
            {
                "name": name,
                "description": f"Sentinel-2 {name} ({common}) super-resolved 4x",
                "eo:common_name": common,
                "eo:center_wavelength": wavelength_um,
                "nodata": 0 if integer else "nan",
                "data_type": m["dtype"],
                "raster:scale": scale,
                "raster:offset": m["offset_dn"] / QUANTIFICATION_VALUE,
                "raster:spatial_resolution": m["resolution_m"],
            }
        )
    return bands


def _spread_asset(m: dict) -> pystac.Asset:
    """The asset of a zone mosaic's twin: per band the std of the 8 self-ensemble views, then per `infer.interval`
    level and band the calibrated interval's half-width (float32, NaN nodata, reflectance)."""
    levels = [float(x) for x in m.get("interval_levels", "").split(",") if x]
    title = f"{m['date']}, EPSG:{m['epsg']}: self-ensemble spread" + (" and calibrated intervals" if levels else "")
    asset = pystac.Asset(str(Path(m["spread"]).resolve()), title, media_type=pystac.MediaType.COG, roles=SPREAD_ROLES)
    asset.description = (
        "Per-pixel standard deviation of the 8 self-ensemble views (flips and rotations) of the SR, in reflectance "
        "units: high where the SR is less certain (edges, texture, clouds); mask SR pixels above a threshold"
    )
    common = {"unit": "1", "nodata": "nan", "data_type": "float32", "raster:spatial_resolution": m["resolution_m"]}
    names = twin_bands(tuple(levels))  # the twin's band names, as infer wrote them: std, then per level
    bands = [
        {"name": name, "description": f"std of the 8 self-ensemble views of {band}, reflectance", **common}
        for name, band in zip(names[: len(BANDS)], BANDS, strict=True)
    ]  # reflectance is dimensionless (UCUM "1"), as the SR it describes
    for j, level in enumerate(levels, start=1):
        bands += [
            {"name": name, **common, "description": (
                f"half-width of the calibrated {level:.0%} interval of {band}: the true reflectance lies within "
                f"SR +- this with probability {level:.2f}, reflectance")}
            for name, band in zip(names[j * len(BANDS) : (j + 1) * len(BANDS)], BANDS, strict=True)
        ]  # fmt: skip
    asset.extra_fields["bands"] = bands
    if levels:
        asset.description += (
            f"; then per level of {', '.join(f'{x:.2f}' for x in levels)} the half-width of the calibrated interval "
            f"(bands <band>_hwNN): {m.get('interval_calibration', '')}"
        )
        asset.extra_fields["srpipe:interval_levels"] = levels
        asset.extra_fields["srpipe:interval_calibration"] = m.get("interval_calibration", "")
    return asset


def _proj_bbox(m: dict) -> list[float]:
    """The mosaic's bounds in its own CRS from its transform and shape."""
    a, _, c, _, e, f = m["transform"]
    height, width = m["shape"]
    return [c, f + height * e, c + width * a, f]


def _model_version(cfg: Config) -> str:
    """'sha256:<hex>' of the weights that made the predictions (`infer.model`, else the run's model.pt)."""
    path = inference_weights(cfg)
    return f"sha256:{state.file_sha256(path)}" if path.exists() else f"unknown ({path} is gone)"


def _utc(date: dt.date, time: dt.time) -> dt.datetime:
    return dt.datetime.combine(date, time, tzinfo=dt.UTC)

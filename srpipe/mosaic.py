"""Mosaic: SR tiles cut back to their cores and merged per UTM zone into a COG with overviews, a VRT and STAC."""

from __future__ import annotations

import datetime as dt
import os
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import pystac
import rasterio
import rasterio.transform
from pyproj import Transformer
from pystac.extensions.projection import ProjectionExtension
from rasterio.windows import Window, from_bounds
from tqdm import tqdm

from srpipe import BANDS, state
from srpipe.cog import cog_writer
from srpipe.config import Config
from srpipe.errors import StageError
from srpipe.grid import Tile, read_grid


def _window(bounds: tuple[float, float, float, float], transform: rasterio.Affine) -> Window:
    """Integer pixel window of `bounds` on a grid (cores lie on pixel edges of the label grid)."""
    return from_bounds(*bounds, transform=transform).round_offsets().round_lengths()


def tile_core_window(tile: Tile, transform: rasterio.Affine) -> Window:
    """Window of the tile's core in its prediction's pixel grid."""
    return _window(tile.core, transform)


def _write_vrt(
    path: Path, tiles: list[Tile], sources: list[Path], epsg: int, transform: rasterio.Affine, width: int, height: int
) -> None:
    """A VRT over the tiles' prediction COGs, each cut to its core (hand-written XML: rasterio has no VRT builder)."""
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = f"EPSG:{epsg}"
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in transform.to_gdal())
    for b, name in enumerate(BANDS, start=1):
        band = ET.SubElement(root, "VRTRasterBand", dataType="Float32", band=str(b))
        ET.SubElement(band, "Description").text = name
        ET.SubElement(band, "NoDataValue").text = "nan"
        for tile, src_path in zip(tiles, sources, strict=True):
            with rasterio.open(src_path) as src:
                src_win = tile_core_window(tile, src.transform)
            dst_win = _window(tile.core, transform)
            source = ET.SubElement(band, "SimpleSource")
            ET.SubElement(source, "SourceFilename", relativeToVRT="1").text = os.path.relpath(src_path, path.parent)
            ET.SubElement(source, "SourceBand").text = str(b)
            for tag, win in (("SrcRect", src_win), ("DstRect", dst_win)):
                ET.SubElement(
                    source,
                    tag,
                    xOff=str(win.col_off),
                    yOff=str(win.row_off),
                    xSize=str(win.width),
                    ySize=str(win.height),
                )
    ET.indent(root)
    state.write_text(path, ET.tostring(root, encoding="unicode"))


def mosaic_zone(cfg: Config, epsg: int, tiles: list[Tile], stem: str) -> dict:
    """Merge the cores of `tiles` (one UTM zone) into `mosaics/<stem>.tif` (COG) and `<stem>.vrt`."""
    date = cfg.as_of_date.isoformat()
    present = [(t, cfg.layout.prediction(cfg.train.name, t.tile_id, date)) for t in tiles]
    missing = [t.tile_id for t, p in present if not p.exists()]
    present = [(t, p) for t, p in present if p.exists()]
    if not present:
        raise StageError(f"no predictions for zone EPSG:{epsg}; run `srpipe infer` first")
    with rasterio.open(present[0][1]) as src:
        res = src.res[0]
    minx = min(t.core[0] for t in tiles)
    miny = min(t.core[1] for t in tiles)
    maxx = max(t.core[2] for t in tiles)
    maxy = max(t.core[3] for t in tiles)
    width, height = round((maxx - minx) / res), round((maxy - miny) / res)
    transform = rasterio.transform.from_bounds(minx, miny, maxx, maxy, width, height)
    out = cfg.layout.mosaics / f"{stem}.tif"
    tags = {"missing_tiles": ",".join(missing)}
    with cog_writer(out, width, height, transform, epsg, cfg.mosaic, tags) as dst:
        # block-wise: each core is written into its window, so memory stays one tile whatever the country's size
        for tile, path in tqdm(present, desc=f"mosaic EPSG:{epsg}", unit="tile", leave=False):
            with rasterio.open(path) as src:
                core = src.read(window=tile_core_window(tile, src.transform))
            dst.write(core, window=_window(tile.core, transform))
    vrt = cfg.layout.mosaics / f"{stem}.vrt"
    _write_vrt(vrt, [t for t, _ in present], [p for _, p in present], epsg, transform, width, height)
    return {
        "path": str(out),
        "epsg": epsg,
        "bounds": (minx, miny, maxx, maxy),
        "shape": (height, width),
        "transform": tuple(transform)[:6],
        "tiles": len(present),
        "missing": missing,
    }


def _stac(cfg: Config, mosaics: list[dict], date: dt.date) -> None:
    """A STAC collection with one item per zone mosaic (COG and VRT assets), in `mosaics/stac/`."""
    collection = pystac.Collection(
        id=f"srpipe-{cfg.plan.region}",
        description=f"4x super-resolved Sentinel-2 (B02, B03, B04, B08) of {cfg.plan.region} by srpipe",
        extent=pystac.Extent(pystac.SpatialExtent([[-180, -90, 180, 90]]), pystac.TemporalExtent([[None, None]])),
        license="proprietary",
    )
    boxes = []
    when = dt.datetime.combine(date, dt.time(), tzinfo=dt.UTC)
    for m in mosaics:
        to_wgs84 = Transformer.from_crs(m["epsg"], 4326, always_xy=True)
        x0, y0, x1, y1 = m["bounds"]
        xs, ys = to_wgs84.transform([x0, x1, x0, x1], [y0, y0, y1, y1])
        box = [min(xs), min(ys), max(xs), max(ys)]
        boxes.append(box)
        geometry = {
            "type": "Polygon",
            "coordinates": [[[box[0], box[1]], [box[2], box[1]], [box[2], box[3]], [box[0], box[3]], [box[0], box[1]]]],
        }
        item = pystac.Item(Path(m["path"]).stem, geometry, box, when, {"srpipe:tiles": m["tiles"]})
        proj = ProjectionExtension.ext(item, add_if_missing=True)
        proj.epsg, proj.bbox = m["epsg"], list(m["bounds"])
        proj.shape, proj.transform = list(m["shape"]), list(m["transform"])
        item.add_asset(
            "cog", pystac.Asset(f"../../{Path(m['path']).name}", media_type=pystac.MediaType.COG, roles=["data"])
        )
        item.add_asset("vrt", pystac.Asset(f"../../{Path(m['path']).with_suffix('.vrt').name}", roles=["data"]))
        collection.add_item(item)
    collection.extent = pystac.Extent(
        pystac.SpatialExtent(
            [[min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]]
        ),
        pystac.TemporalExtent([[when, when]]),
    )
    with state.atomic_path(cfg.layout.stac) as tmp:  # self-contained (relative links): the folder renames whole
        collection.normalize_hrefs(f"{tmp}/")  # the slash: pystac takes a last name with a dot for a file
        collection.save(pystac.CatalogType.SELF_CONTAINED)


def mosaic(cfg: Config) -> dict:
    """Mosaic every UTM zone of the run; one zone gives `<region>_<date>.tif`, several `<region>_<date>_<epsg>.tif`."""
    tiles = read_grid(cfg.run_path)
    zones: dict[int, list[Tile]] = defaultdict(list)
    for t in tiles:
        zones[t.epsg].append(t)
    date = cfg.as_of_date
    results = []
    for epsg, zone_tiles in sorted(zones.items()):
        stem = f"{cfg.plan.region}_{date.isoformat()}" + (f"_{epsg}" if len(zones) > 1 else "")
        results.append(mosaic_zone(cfg, epsg, zone_tiles, stem))
    _stac(cfg, results, date)
    return {"mosaics": [r["path"] for r in results], "missing": [t for r in results for t in r["missing"]]}

"""Mosaic: SR tiles' cores merged block by block into one COG per UTM zone and date (the `mosaic` stage; per date
the VRT over the zones, the reprojected mosaic and STAC are `srpipe.mosaic.catalog`'s). With `infer.uncertainty` each
zone mosaic has a spread twin (`.std`): the tiles' self-ensemble std, mosaicked the same way.

Memory stays flat whatever the country's size: a zone mosaic is written one `mosaic.blocksize` block at a time, each
block read from the few tile cores it overlaps (an STRtree of the cores) and masked by the AOI clipped to the block;
GDAL's block cache is capped for the stage.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.features import geometry_mask
from rasterio.io import DatasetReader
from rasterio.windows import Window, from_bounds
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform
from rio_cogeo.cogeo import cog_validate

from srpipe import BANDS, state, twin_bands
from srpipe.config import Config
from srpipe.data.cog import cog_writer
from srpipe.data.grid import Tile, load_aoi, tiles_by_id
from srpipe.data.s2units import NODATA_DN
from srpipe.errors import StageError
from srpipe.infer.record import InferRecord
from srpipe.mosaic.units import ALL_DATES, mosaic_reads

GDAL_CACHE_BYTES = 64 * 2**20  # GDAL's default is 5 % of RAM: a small cap keeps peak RSS flat in the area (streaming)
_OPEN_PREDICTIONS = 8  # a block overlaps <= 4 cores, the next block 2 of them: each tile opens once per block row
_AOI_SEGMENT_DEG = 0.001  # AOI edges are straight in lon/lat: densified (~100 m) before reprojection
SPREAD_CONTENT = "std of the 8 self-ensemble views, then calibrated interval half-widths, label (reflectance) units"


def mosaic_unit(cfg: Config, unit: str) -> dict:
    """Mosaic one unit '<epsg>_<YYYY-MM-DD>' (or '<epsg>_all': every date of the zone) into zone COGs; their info."""
    epsg_text, _, date = unit.partition("_")
    epsg = int(epsg_text)
    done = state.done_records(cfg.run_path, "infer")
    reads = {t: InferRecord.read(t, done[t]) for t in mosaic_reads(unit, done)}
    dates = sorted({d for r in reads.values() for d in r.dates}) if date == ALL_DATES else [date]
    if not dates:
        raise StageError(f"mosaic {unit}: no tile of EPSG:{epsg} has a prediction; run `srpipe infer` first")
    zone = [t for t in tiles_by_id(cfg.run_path).values() if t.epsg == epsg]
    if not zone:
        raise StageError(f"mosaic {unit}: the grid has no tile in EPSG:{epsg}; was the run re-planned? re-run infer")
    aoi = load_aoi(cfg.plan.aoi) if cfg.mosaic.mask_aoi and cfg.plan.aoi else None
    outputs = []
    for d in dates:
        on_date = {t: r for t, r in reads.items() if d in r.dates}
        outputs.append(mosaic_zone(cfg, epsg, d, zone, on_date, aoi))
    return {"mosaics": outputs}


def mosaic_zone(
    cfg: Config, epsg: int, date: str, zone: list[Tile], records: dict[str, InferRecord], aoi: shapely.Geometry | None
) -> dict:
    """Write `layout.zone_mosaic` of one zone and date from the cores of `zone`'s tiles inferred on `date`.

    `records`: infer's done records of the tiles with an output on `date`; `aoi` (EPSG:4326) or None: nodata outside
    it. Tiles of the zone without a prediction stay nodata and are listed. Returns the mosaic's info (path, grid,
    dtype, offset, tiles, missing, input dates, footprint in EPSG:4326, COG warnings, MB/s; with `infer.uncertainty`
    the spread twin's path and warnings).
    """
    start = time.perf_counter()
    name = f"{epsg}_{date}"
    paths = {t.tile_id: cfg.layout.prediction(cfg.prediction_model, t.tile_id, date) for t in zone}
    present = [t for t in zone if t.tile_id in records and paths[t.tile_id].exists()]
    missing = sorted(t.tile_id for t in zone if t not in present)
    if not present:
        raise StageError(f"mosaic {name}: no predictions of zone EPSG:{epsg} on {date}; run `srpipe infer` first")
    with rasterio.open(paths[present[0].tile_id]) as first:
        dtype, res = first.dtypes[0], first.res[0]
    offset_dn = _zone_offset(name, date, {t.tile_id: records[t.tile_id] for t in present})
    grid = _zone_grid(zone, res)
    transform, width, height = grid
    aoi_zone = None if aoi is None else _aoi_in(aoi, epsg)
    out = cfg.layout.zone_mosaic(cfg.plan.region, date, epsg)
    tags = {"date": date, "model": cfg.prediction_model, "tiles": len(present), "missing_tiles": ",".join(missing)}
    digests = {t.tile_id: records[t.tile_id].sha256 for t in present}
    predictions = _Predictions(name, {t.tile_id: paths[t.tile_id] for t in present}, dtype, res, digests)
    warnings = _write_zone(cfg, out, predictions, present, grid, epsg, aoi_zone, tags, offset_dn, BANDS)
    seconds = time.perf_counter() - start
    spread = {}
    if cfg.infer.writes_twin:
        spread = _spread_zone(cfg, name, date, epsg, present, grid, aoi_zone, tags, digests)
    return spread | {
        "date": date,
        "epsg": epsg,
        "path": str(out),
        "shape": [height, width],
        "transform": list(transform)[:6],
        "resolution_m": res,
        "dtype": dtype,
        "offset_dn": offset_dn,
        "tiles": len(present),
        "missing": missing,
        "input_dates": sorted({d for r in records.values() for d in r.frames.get(date, [])}),
        "footprint": shapely.geometry.mapping(_footprint(present, epsg, aoi)),
        "cog_warnings": warnings,
        "seconds": round(seconds, 2),
        "mb_per_s": round(out.stat().st_size / 1e6 / seconds, 2),
    }


def _write_zone(
    cfg: Config,
    out: Path,
    sources: _Predictions,
    present: list[Tile],
    grid: tuple[Affine, int, int],
    epsg: int,
    aoi_zone: shapely.Geometry | None,
    tags: dict,
    offset_dn: int,
    descriptions: tuple[str, ...],
) -> list[str]:
    """Stream `present` tiles' cores (read from `sources`) block by block into the COG `out` on the zone's `grid`
    ((transform, width, height)), nodata outside `aoi_zone`; its COG warnings."""
    transform, width, height = grid
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        sources,
        cog_writer(
            out, width, height, transform, epsg, cfg.mosaic, tags, sources.dtype, offset_dn, descriptions
        ) as dst,
    ):
        cores = shapely.STRtree([shapely.box(*t.core) for t in present])
        for window in blocks(width, height, cfg.mosaic.blocksize):
            dst.write(_block(window, transform, present, cores, sources, aoi_zone), window=window)
    return validate_cog(out)


def _spread_zone(
    cfg: Config,
    name: str,
    date: str,
    epsg: int,
    present: list[Tile],
    grid: tuple[Affine, int, int],
    aoi_zone: shapely.Geometry | None,
    tags: dict,
    digests: dict[str, dict[str, str]],
) -> dict:
    """Write the spread twin of a zone mosaic: `present` tiles' `<date>.std.tif` (float32, NaN nodata) on the SR
    mosaic's grid, cores and AOI mask; {"spread": its path, "spread_cog_warnings"}."""
    paths = {t.tile_id: cfg.layout.prediction_std(cfg.prediction_model, t.tile_id, date) for t in present}
    lacking = sorted(t for t, path in paths.items() if not path.exists())
    if lacking:
        raise StageError(
            f"mosaic {name}: infer.uncertainty is on but {len(lacking)} tiles have no {date}.std.tif "
            f"({', '.join(lacking[:5])}); re-run `srpipe infer --tiles {' '.join(lacking[:5])}`"
        )
    out = cfg.layout.zone_mosaic(cfg.plan.region, date, epsg, spread=True)
    bands = twin_bands(cfg.infer.interval_levels)
    sources = _Predictions(name, paths, "float32", grid[0].a, digests, len(bands))
    # cog_writer's average overviews suit a std: a zoomed-out pixel shows the mean spread under it (a hot spot fades,
    # never moves), where nearest would show one arbitrary pixel's
    intervals = _interval_tags(paths[present[0].tile_id])
    tags = {**tags, "content": SPREAD_CONTENT, **intervals}
    warnings = _write_zone(cfg, out, sources, present, grid, epsg, aoi_zone, tags, 0, bands)
    return {"spread": str(out), "spread_cog_warnings": warnings, **intervals}


def _interval_tags(twin: Path) -> dict[str, str]:
    """The interval tags infer wrote on a tile's twin (`interval_levels`, `interval_calibration`); {} without."""
    with rasterio.open(twin) as src:
        tags = src.tags()
    return {k: tags[k] for k in ("interval_levels", "interval_calibration") if k in tags}


def validate_cog(path: Path) -> list[str]:
    """rio-cogeo's warnings on the COG at `path` (printed); StageError naming its errors when it is no valid COG."""
    valid, errors, warnings = cog_validate(str(path), quiet=True)
    if not valid or errors:
        raise StageError(f"{path} is not a valid COG: {'; '.join(errors)}")
    for warning in warnings:
        print(f"mosaic: {path.name}: COG warning: {warning}", flush=True)
    return list(warnings)


def _zone_offset(name: str, date: str, records: dict[str, InferRecord]) -> int:
    """The one radiometric DN offset of a zone-date's tiles (infer's `offset_dn` on `date`)."""
    offsets: dict[int, list[str]] = collections.defaultdict(list)
    for tile_id, record in records.items():
        offsets[int(record.offset_dn.get(date, 0))].append(tile_id)
    if len(offsets) > 1:
        detail = "; ".join(f"offset {o}: {', '.join(sorted(t)[:5])}" for o, t in sorted(offsets.items()))
        raise StageError(f"mosaic {name}: tiles disagree on the radiometric offset ({detail}); re-run their infer")
    return next(iter(offsets))


def _zone_grid(zone: list[Tile], res: float) -> tuple[Affine, int, int]:
    """(transform, width, height) of the zone's pixel grid at `res` metres over every tile core of the zone."""
    minx, miny = min(t.core[0] for t in zone), min(t.core[1] for t in zone)
    maxx, maxy = max(t.core[2] for t in zone), max(t.core[3] for t in zone)
    return Affine(res, 0.0, minx, 0.0, -res, maxy), round((maxx - minx) / res), round((maxy - miny) / res)


def _aoi_in(aoi: shapely.Geometry, epsg: int | str) -> shapely.Geometry:
    """The AOI (EPSG:4326) in `epsg`, densified first so its lon/lat-straight edges stay where they are; prepared."""
    to_crs = Transformer.from_crs(4326, epsg, always_xy=True)
    dense = shapely.segmentize(aoi, _AOI_SEGMENT_DEG)
    geometry = shapely.make_valid(shapely.transform(dense, lambda xy: np.column_stack(to_crs.transform(*xy.T))))
    shapely.prepare(geometry)
    return geometry


def _footprint(tiles: list[Tile], epsg: int, aoi: shapely.Geometry | None) -> shapely.Geometry:
    """The mosaic's data footprint in EPSG:4326: the union of `tiles`' cores, intersected with the AOI if any."""
    cores = shapely.coverage_union_all([shapely.box(*t.core) for t in tiles])
    to_wgs84 = Transformer.from_crs(epsg, 4326, always_xy=True)
    dense = shapely.segmentize(cores, 200.0)  # UTM-straight edges curve in lon/lat
    footprint = shapely.transform(dense, lambda xy: np.column_stack(to_wgs84.transform(*xy.T)))
    return footprint if aoi is None else shapely.intersection(footprint, aoi)


def blocks(width: int, height: int, size: int) -> Iterator[Window]:
    """`size`-aligned windows covering a (height, width) raster, row by row."""
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))


class _Predictions:
    """The prediction COGs of one zone-date, opened on demand; the most recently used `_OPEN_PREDICTIONS` stay open."""

    def __init__(
        self,
        name: str,
        paths: dict[str, Path],
        dtype: str,
        res: float,
        digests: dict[str, dict[str, str]],
        bands: int = len(BANDS),
    ) -> None:
        self.name, self.paths, self.dtype, self.res, self.digests = name, paths, dtype, res, digests
        self.bands = bands  # per COG: the SR's four, or a twin's (std, then half-widths)
        self.open: collections.OrderedDict[str, DatasetReader] = collections.OrderedDict()
        self.checked: set[str] = set()  # tiles whose SHA-256 matched: a tile closed and reopened is not read twice

    def __enter__(self) -> _Predictions:
        return self

    def __exit__(self, *exc: object) -> None:
        for src in self.open.values():
            src.close()
        self.open.clear()

    def _check(self, tile_id: str) -> None:
        """StageError naming the file and the fix when a COG's content is not what infer recorded writing (once per
        tile)."""
        if tile_id in self.checked:
            return
        path = self.paths[tile_id]
        expected = self.digests.get(tile_id, {}).get(path.name)
        if expected and state.file_sha256(path) != expected:
            raise StageError(
                f"mosaic {self.name}: {path} is corrupt (its SHA-256 differs from the one infer recorded writing it); "
                f"rebuild it: delete _state/infer/{tile_id}.done, then `srpipe infer RUN --tiles {tile_id}`"
            )
        self.checked.add(tile_id)

    def get(self, tile_id: str) -> DatasetReader:
        """The open prediction of `tile_id`; StageError when its dtype or pixel size differs from the zone's."""
        if tile_id in self.open:
            self.open.move_to_end(tile_id)
            return self.open[tile_id]
        self._check(tile_id)
        src = rasterio.open(self.paths[tile_id])
        if src.dtypes[0] != self.dtype or not math.isclose(src.res[0], self.res):
            src.close()
            raise StageError(
                f"mosaic {self.name}: tile {tile_id}'s prediction is {src.dtypes[0]} at {src.res[0]} m, the zone's "
                f"others {self.dtype} at {self.res} m; re-run `srpipe infer` for it (infer.output_dtype changed?)"
            )
        self.open[tile_id] = src
        if len(self.open) > _OPEN_PREDICTIONS:
            self.open.popitem(last=False)[1].close()
        return src


def _block(
    window: Window,
    transform: Affine,
    tiles: list[Tile],
    cores: shapely.STRtree,
    predictions: _Predictions,
    aoi: shapely.Geometry | None,
) -> np.ndarray:
    """(bands, h, w) of one mosaic block: the cores it overlaps, nodata where no core is and outside `aoi`."""
    fill = NODATA_DN if predictions.dtype == "uint16" else np.nan
    block = np.full((predictions.bands, int(window.height), int(window.width)), fill, predictions.dtype)
    block_transform = window_transform(window, transform)
    box = shapely.box(*window_bounds(window, transform))
    if aoi is not None and not aoi.intersects(box):
        return block
    res = transform.a
    for i in cores.query(box, predicate="intersects"):
        tile = tiles[int(i)]
        x0, y0 = max(tile.core[0], box.bounds[0]), max(tile.core[1], box.bounds[1])
        x1, y1 = min(tile.core[2], box.bounds[2]), min(tile.core[3], box.bounds[3])
        if x1 - x0 < res / 2 or y1 - y0 < res / 2:
            continue  # touches the block's edge only
        dst = from_bounds(x0, y0, x1, y1, block_transform).round_offsets().round_lengths()
        src = predictions.get(tile.tile_id)
        src_window = from_bounds(x0, y0, x1, y1, src.transform).round_offsets().round_lengths()
        rows = slice(dst.row_off, dst.row_off + dst.height)
        cols = slice(dst.col_off, dst.col_off + dst.width)
        block[:, rows, cols] = src.read(window=src_window, out_shape=(predictions.bands, dst.height, dst.width))
    if aoi is not None and not aoi.contains(box):
        outside = geometry_mask([shapely.clip_by_rect(aoi, *box.bounds)], block.shape[1:], block_transform)
        block[:, outside] = fill
    return block

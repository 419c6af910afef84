"""The `synthetic` source: seeded S2 stacks generated on the fly from world coordinates, for dry runs without data.

Every value is a function of the pixel centre's UTM coordinates (zone, x, y), the date and `source.seed`, never of the
tile, so overlapping tiles agree exactly on the pixels they share and mosaics have no seams. The land is landscapes
(farmland, forest, lakes, towns; about 1.5 km) of field parcels (about 240 m x 160 m, edges warped) whose crops green
up and ripen over the season, crossed by roads (mixed into a pixel by the share they cover), under a slow gradient.
Each date adds one atmospheric gain and offset per band (the same everywhere, as one acquisition) and sensor noise
hashed from (date, pixel, band); on `cloudy_date_fraction` of the dates bright clouds are blobs on a world lattice.
The arithmetic is integer hashing and float64 numpy on exact pixel coordinates (centimetres), so the same inputs give
the same bits whatever the tile. There is no label: only inference and mosaics run on it (and plan, which it covers).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools

import numpy as np

from srpipe.config import SourceConfig
from srpipe.data.grid import Tile
from srpipe.errors import TileError
from srpipe.sources.stack import S2Stack

S2_RESOLUTION_M = 10.0  # the default S2 pixel (`source.lr_resolution_m` = 0)

PARCEL_M = (240.0, 160.0)  # field parcel size along x and y
WARP_M, WARP_PERIOD_M = 50.0, (1100.0, 900.0)  # parcel edges wobble by this much over these wavelengths
ROAD_SPACING_M, ROAD_WIDTH_M = (1700.0, 2300.0), 20.0  # a road every this many metres along x and y
GRADIENT, GRADIENT_PERIOD_M = 0.08, (7300.0, 5100.0)  # slow +-8 % brightness change (soil, haze)
# land covers: B02, B03, B04, B08 top-of-atmosphere reflectance
COVERS = {
    "crop_bare": (0.070, 0.095, 0.120, 0.210),  # a crop parcel before emergence and after harvest
    "crop_green": (0.040, 0.070, 0.045, 0.380),  # ... at the peak of the season
    "grass": (0.045, 0.075, 0.060, 0.300),
    "forest": (0.030, 0.050, 0.035, 0.250),
    "bare": (0.080, 0.110, 0.140, 0.200),
    "water": (0.050, 0.050, 0.030, 0.015),
    "urban": (0.090, 0.100, 0.110, 0.160),
}
COVER_NAMES = ("crop", "grass", "forest", "bare", "water", "urban")  # parcel covers; a crop's is seasonal
# landscapes (about 1.5 km cells, edges warped more): their share of the land and of each parcel cover inside them
LANDSCAPE_M, LANDSCAPE_WARP_M, LANDSCAPE_WARP_PERIOD_M = 1500.0, 300.0, (4100.0, 3700.0)
LANDSCAPES = {  # name: (share of the land, shares of COVER_NAMES)
    "farmland": (0.60, (0.65, 0.28, 0.02, 0.05, 0.0, 0.0)),
    "forest": (0.30, (0.0, 0.08, 0.92, 0.0, 0.0, 0.0)),
    "lake": (0.03, (0.0, 0.0, 0.0, 0.0, 1.0, 0.0)),
    "town": (0.07, (0.0, 0.30, 0.05, 0.0, 0.0, 0.65)),
}
ROAD = np.array([0.100, 0.110, 0.120, 0.140])
CROP_PEAK_DOY = (160.0, 205.0)  # winter and spring crops; each parcel shifts its peak by up to +-15 days
CROP_SEASON_DAYS = 45.0  # Gaussian half-width of the green-up, days
NOISE_SIGMA = 0.002  # sensor noise, reflectance units (as the sample source)
CLOUD_CELL_M, CLOUD_P = 6000.0, 0.6  # the cloud lattice: a blob in this share of its cells on a cloudy date
CLOUD_RADIUS_M = (700.0, 2500.0)
CLOUD_REFLECTANCE = np.array([0.55, 0.50, 0.48, 0.50])  # bright and highest in blue (as the sample source)
CLOUD_MASK_OPACITY = 0.05  # the source's cloud mask: opacity above this

_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic): a well-spread bijection of 64-bit keys."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _hash(*keys: np.ndarray | int) -> np.ndarray:
    """uint64 hash of integer keys (broadcast against each other); the same keys give the same bits anywhere."""
    z = np.uint64(0x243F6A8885A308D3)
    with np.errstate(over="ignore"):
        for key in keys:
            key = np.asarray(key)
            z = _mix(z ^ (key if key.dtype == np.uint64 else key.astype(np.int64).view(np.uint64)) + _GOLDEN)
    return np.asarray(z)


def _uniform(h: np.ndarray) -> np.ndarray:
    """float64 in [0, 1) from the top 53 bits of uint64 hashes."""
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


@functools.lru_cache(maxsize=8)
def synthetic_dates(cfg: SourceConfig) -> tuple[dt.date, ...]:
    """The `n_dates` acquisition dates, evenly spread over `time_interval` (one orbit: the same for every tile)."""
    start, end = (dt.date.fromisoformat(d[:10]) for d in cfg.time_interval)
    days = np.linspace(0, (end - start).days, cfg.n_dates).round()
    return tuple(start + dt.timedelta(days=int(d)) for d in days)


@functools.lru_cache(maxsize=8)
def cloudy_dates(cfg: SourceConfig) -> frozenset[int]:
    """Indices of the round(cloudy_date_fraction x n_dates) dates that carry clouds (seeded; the same everywhere)."""
    n = cfg.n_dates
    rng = np.random.default_rng([cfg.seed, 0])
    return frozenset(rng.permutation(n)[: round(cfg.cloudy_date_fraction * n)].tolist())


@functools.lru_cache(maxsize=8)
def _atmosphere(cfg: SourceConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-date, per-band (T, 4) gain and offset: one acquisition's radiometry, seeded by (seed, date index)."""
    draws = [np.random.default_rng([cfg.seed, 2, t]) for t in range(cfg.n_dates)]
    gains = np.array([r.uniform(0.97, 1.03, 4) for r in draws]).reshape(-1, 4)
    return gains, np.array([r.uniform(-0.005, 0.005, 4) for r in draws]).reshape(-1, 4)


def lr_grid_shape(cfg: SourceConfig, tile: Tile) -> tuple[int, int]:
    """(h, w) S2 pixels of the tile's buffered box at `lr_resolution_m`; TileError unless the box holds whole pixels."""
    minx, miny, maxx, maxy = tile.bounds
    w, h = (maxx - minx) / cfg.lr_resolution_m, (maxy - miny) / cfg.lr_resolution_m
    if abs(w - round(w)) > 1e-6 or abs(h - round(h)) > 1e-6:
        raise TileError(
            tile.tile_id,
            f"its buffered box ({maxx - minx:g} m x {maxy - miny:g} m) is not a whole number of "
            f"source.lr_resolution_m = {cfg.lr_resolution_m:g} m pixels; choose a resolution that divides it",
        )
    return round(h), round(w)


def _pixel_centres(cfg: SourceConfig, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the tile's S2 pixels in int64 centimetres: x (w,) west to east, y (h,) north to south."""
    h, w = lr_grid_shape(cfg, tile)
    minx, _, _, maxy = tile.bounds
    res = cfg.lr_resolution_m
    xs = np.rint((minx + (np.arange(w) + 0.5) * res) * 100).astype(np.int64)
    ys = np.rint((maxy - (np.arange(h) + 0.5) * res) * 100).astype(np.int64)
    return xs, ys


def _road_share(d_m: np.ndarray, spacing_m: float, resolution_m: float) -> np.ndarray:
    """Share of a pixel's width covered by roads every `spacing_m` (1D), given its centre coordinate `d_m` (metres)."""
    offset = np.abs(d_m - np.rint(d_m / spacing_m) * spacing_m)  # distance from the pixel centre to the nearest road
    lo = np.maximum(offset - ROAD_WIDTH_M / 2, -resolution_m / 2)
    hi = np.minimum(offset + ROAD_WIDTH_M / 2, resolution_m / 2)
    return np.clip(hi - lo, 0.0, None) / resolution_m


def _cell(
    seed: int,
    stream: int,
    epsg: int,
    x: np.ndarray,
    y: np.ndarray,
    size_x_m: float,
    size_y_m: float,
    warp_m: float,
    period_m: tuple[float, float],
    phase: np.ndarray,
) -> np.ndarray:
    """(h, w) uint64 hash of the warped lattice cell (size_x_m x size_y_m) holding each centre x (1, w), y (h, 1) m."""
    wx = x + warp_m * np.sin(2 * np.pi * y / period_m[1] + phase[0])
    wy = y + warp_m * np.sin(2 * np.pi * x / period_m[0] + phase[1])
    return _hash(seed, stream, epsg, np.floor(wx / size_x_m).astype(np.int64), np.floor(wy / size_y_m).astype(np.int64))


def _covers(landscape_u: np.ndarray, parcel: np.ndarray) -> np.ndarray:
    """(h, w) index into COVER_NAMES: the landscape draw (h, w) picks the shares, the parcel hash the cover."""
    shares = np.array([v[0] for v in LANDSCAPES.values()])
    landscape = np.minimum(
        np.searchsorted(np.cumsum(shares), landscape_u * shares.sum(), side="right"), shares.size - 1
    )
    cumulative = np.cumsum([v[1] for v in LANDSCAPES.values()], axis=1)  # (landscapes, covers)
    u = _uniform(_hash(parcel, 0))[..., None]
    return np.minimum((u >= cumulative[landscape]).sum(axis=-1), len(COVER_NAMES) - 1)


def _land(cfg: SourceConfig, epsg: int, xs: np.ndarray, ys: np.ndarray, doys: np.ndarray) -> np.ndarray:
    """(T, h, w, 4) float64 cloud-free ground reflectance at centres xs (w,), ys (h,) in cm, on days of year (T,)."""
    seed = cfg.seed
    x, y = xs[None, :] / 100.0, ys[:, None] / 100.0
    phase = _uniform(_hash(seed, 1, epsg, np.arange(8))) * 2 * np.pi
    region = _cell(seed, 5, epsg, x, y, LANDSCAPE_M, LANDSCAPE_M, LANDSCAPE_WARP_M, LANDSCAPE_WARP_PERIOD_M, phase[4:])
    cell = _cell(seed, 2, epsg, x, y, *PARCEL_M, WARP_M, WARP_PERIOD_M, phase[:2])
    cover = _covers(_uniform(region), cell)
    table = np.array([COVERS["crop_bare" if name == "crop" else name] for name in COVER_NAMES])  # (covers, 4)
    ground = np.broadcast_to(table[cover], (doys.size, *cover.shape, 4)).copy()
    crop = cover == COVER_NAMES.index("crop")
    if crop.any():
        shift = 30.0 * _uniform(_hash(cell[crop], 2)) - 15.0
        peak = np.where(_hash(cell[crop], 3) & np.uint64(1), CROP_PEAK_DOY[1], CROP_PEAK_DOY[0]) + shift
        green = np.exp(-(((doys[:, None] - peak[None, :]) / CROP_SEASON_DAYS) ** 2))[..., None]  # (T, n, 1)
        bare, lush = np.array(COVERS["crop_bare"]), np.array(COVERS["crop_green"])
        ground[:, crop] = bare * (1 - green) + lush * green
    ground *= (0.9 + 0.2 * _uniform(_hash(cell, 1)))[None, ..., None]  # each parcel a little brighter or darker
    roads = 1 - (1 - _road_share(x, ROAD_SPACING_M[0], cfg.lr_resolution_m)) * (
        1 - _road_share(y, ROAD_SPACING_M[1], cfg.lr_resolution_m)
    )
    ground = ground * (1 - roads[None, ..., None]) + ROAD * roads[None, ..., None]
    slope = 1 + GRADIENT * np.sin(2 * np.pi * x / GRADIENT_PERIOD_M[0] + phase[2]) * np.cos(
        2 * np.pi * y / GRADIENT_PERIOD_M[1] + phase[3]
    )
    return ground * slope[None, ..., None]


def _cloud_opacity(
    cfg: SourceConfig, epsg: int, date: dt.date, xs: np.ndarray, ys: np.ndarray, bounds: tuple[float, ...]
) -> np.ndarray:
    """(h, w) float64 opacity in [0, 1] of date's cloud blobs (one per lattice cell, hashed) at centres xs, ys (cm)."""
    minx, miny, maxx, maxy = bounds
    reach = CLOUD_RADIUS_M[1]
    ix = np.arange(np.floor((minx - reach) / CLOUD_CELL_M), np.floor((maxx + reach) / CLOUD_CELL_M) + 1)
    iy = np.arange(np.floor((miny - reach) / CLOUD_CELL_M), np.floor((maxy + reach) / CLOUD_CELL_M) + 1)
    cx, cy = (a.astype(np.int64).ravel() for a in np.meshgrid(ix, iy))
    h = _hash(cfg.seed, 3, epsg, date.toordinal(), cx, cy)
    here = _uniform(h) < CLOUD_P
    h, cx, cy = h[here], cx[here], cy[here]
    if h.size == 0:
        return np.zeros((ys.size, xs.size))
    centre_x = (cx + _uniform(_hash(h, 1))) * CLOUD_CELL_M
    centre_y = (cy + _uniform(_hash(h, 2))) * CLOUD_CELL_M
    radius = CLOUD_RADIUS_M[0] + (CLOUD_RADIUS_M[1] - CLOUD_RADIUS_M[0]) * _uniform(_hash(h, 3))
    peak = 0.7 + 0.3 * _uniform(_hash(h, 4))
    x, y = xs / 100.0, ys / 100.0
    d = np.hypot(x[None, None, :] - centre_x[:, None, None], y[None, :, None] - centre_y[:, None, None])
    return (peak[:, None, None] * np.clip(1.6 * (1 - d / radius[:, None, None]), 0, 1)).max(axis=0)


def synthetic_stack(cfg: SourceConfig, tile: Tile) -> S2Stack:
    """The tile's S2 series on its buffered box: (T, h, w, 4) float32 B02, B03, B04, B08 reflectance at
    `lr_resolution_m` (h, w = box size / resolution), all valid, clouds where the blobs' opacity is above 0.05."""
    xs, ys = _pixel_centres(cfg, tile)
    dates = list(synthetic_dates(cfg))
    doys = np.array([d.timetuple().tm_yday for d in dates], np.float64)
    image = _land(cfg, tile.epsg, xs, ys, doys)
    gains, offsets = _atmosphere(cfg)
    image = image * gains[:, None, None, :] + offsets[:, None, None, :]
    ordinals = np.array([d.toordinal() for d in dates])[:, None, None, None]
    noise = _uniform(
        _hash(cfg.seed, 4, tile.epsg, ordinals, xs[None, None, :, None], ys[None, :, None, None], np.arange(4))
    )
    image += (2 * noise - 1) * (NOISE_SIGMA * np.sqrt(3.0))  # uniform noise of standard deviation NOISE_SIGMA
    clouds = np.zeros(image.shape[:3], bool)
    for t in sorted(cloudy_dates(cfg)):
        opacity = _cloud_opacity(cfg, tile.epsg, dates[t], xs, ys, tile.bounds)[..., None]
        image[t] = image[t] * (1 - opacity) + CLOUD_REFLECTANCE * opacity
        clouds[t] = opacity[..., 0] > CLOUD_MASK_OPACITY
    return S2Stack(image.astype(np.float32), np.ones(clouds.shape, bool), clouds, dates, tile.bounds, tile.epsg)


class SyntheticSource:
    """The `synthetic` source behind the `Source` protocol: covers the whole world, has no labels, downloads
    nothing (a tile's record only says how many frames it will have), generates S2 stacks where they are read."""

    has_labels = False
    paid = False
    remote = False

    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg if cfg.lr_resolution_m else dataclasses.replace(cfg, lr_resolution_m=S2_RESOLUTION_M)

    def describe(self) -> str:
        """The source in a few words."""
        return f"the synthetic source (seed {self.cfg.seed}, no labels)"

    def coverage(self, aoi: object) -> None:
        """None: generated anywhere."""
        return None

    def download(self, tile: Tile, path: object) -> dict:
        """Nothing to fetch: check the box holds whole S2 pixels and record how many frames the tile will have."""
        shape = lr_grid_shape(self.cfg, tile)
        return {"s2_frames": len(synthetic_dates(self.cfg)), "s2_shape": list(shape), "synthetic": True}

    def s2_stack(self, tile: Tile) -> S2Stack:
        """The tile's generated S2 series (see `synthetic_stack`)."""
        return synthetic_stack(self.cfg, tile)

    def estimate(self, tiles: list[Tile]) -> str:
        """Nothing to pay: the synthetic source generates its stacks."""
        return "synthetic source: offline, no requests and no processing units"

    def radiometric_offset(self, date: dt.date) -> tuple[int, str]:
        """No offset: synthetic values are reflectance."""
        return 0, "synthetic source: reflectance without offset"

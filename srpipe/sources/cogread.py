"""Windowed reads of remote or local COGs onto a tile's grid (rasterio/GDAL), signed when the archive needs it
(`stac.sign`), retried on 429/5xx and dropped connections, each item's read cached on disk so that a re-run reads
nothing twice."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_bounds
from rasterio.vrt import WarpedVRT

from srpipe.config import SourceConfig
from srpipe.data.grid import Tile
from srpipe.errors import SrpipeError, TileError
from srpipe.sources.sentinelhub.client import RetryPolicy
from srpipe.sources.stac.sign import Signer, redact
from srpipe.state import atomic_path


class CogReadError(SrpipeError):
    """A COG could not be read after every retry; the message names the file and the fix."""


def gdal_env(cfg: SourceConfig) -> dict[str, object]:
    """GDAL settings of every read: its own HTTP retries of 429/5xx, the timeout, no directory listing per open."""
    return {
        "GDAL_HTTP_MAX_RETRY": cfg.max_retries,
        "GDAL_HTTP_RETRY_DELAY": cfg.retry_base_s,
        "GDAL_HTTP_TIMEOUT": int(max(cfg.timeout_s, 1)),
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF,.jp2",
    }


def read_band(href: str, tile: Tile, resolution_m: float, resampling: Resampling) -> np.ndarray:
    """(H, W) raw values of band 1 of `href` on `tile`'s grid at `resolution_m` (0 outside the file: nodata);
    nearest where the file shares the tile's CRS (values kept exactly), else `resampling`."""
    width = round((tile.bounds[2] - tile.bounds[0]) / resolution_m)
    height = round((tile.bounds[3] - tile.bounds[1]) / resolution_m)
    transform = from_bounds(*tile.bounds, width, height)
    with rasterio.open(href) as src:
        same = src.crs is not None and src.crs.to_epsg() == tile.epsg
        with WarpedVRT(
            src,
            crs=f"EPSG:{tile.epsg}",
            transform=transform,
            width=width,
            height=height,
            nodata=0,
            resampling=Resampling.nearest if same else resampling,
        ) as vrt:
            return vrt.read(1)


def read_item(
    hrefs: tuple[str, ...], tile: Tile, cfg: SourceConfig, cache: Path | None, signer: Signer | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """((H, W, 4) uint16 DN of B02, B03, B04, B08, (H, W) uint8 SCL) of one item on `tile`'s grid at
    `lr_resolution_m`, each href signed by `signer` when read; read from `cache` (an .npz) when an earlier run
    saved it, else read and saved there."""
    if cache is not None and cache.exists():
        with np.load(cache) as saved:
            return saved["dn"], saved["scl"]
    signer = signer or Signer()
    policy = RetryPolicy(cfg.max_retries, cfg.retry_base_s, cfg.retry_max_s)
    dn = np.stack([_retried(h, tile, cfg, Resampling.bilinear, policy, signer) for h in hrefs[:4]], axis=-1)
    scl = _retried(hrefs[4], tile, cfg, Resampling.nearest, policy, signer).astype(np.uint8)
    if cache is not None:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as out:
                np.savez_compressed(out, dn=dn.astype(np.uint16), scl=scl)
    return dn.astype(np.uint16), scl


def _retried(
    href: str, tile: Tile, cfg: SourceConfig, resampling: Resampling, policy: RetryPolicy, signer: Signer
) -> np.ndarray:
    """`read_band` of `href` signed afresh per attempt, retried with jittered backoff: GDAL retries HTTP 429/5xx
    itself; this also covers connections that drop mid-read, GDAL's cached failures (cleared per attempt) and a
    refused (403) token (fetched again); a 403 without signing is a TileError naming 'source.stac_sign'."""
    env = gdal_env(cfg)
    for attempt in range(policy.max_retries + 1):
        signed = signer.sign(href)
        try:
            with rasterio.Env(**env):
                return read_band(signed, tile, cfg.lr_resolution_m, resampling)
        except rasterio.errors.RasterioError as exc:
            why = redact(str(exc))
            refused = "response code: 403" in why
            if refused and (not signer.signs or attempt == policy.max_retries):
                raise TileError(tile.tile_id, _refusal(href, cfg, signer.signs)) from None
            if attempt == policy.max_retries:
                raise CogReadError(
                    f"tile {tile.tile_id}: {href} could not be read after {attempt + 1} tries ({why}); the file is "
                    "damaged or the archive is down: re-run later, or narrow 'source.time_interval' to leave it out"
                ) from None  # the cause may quote the signed href
            if refused:
                signer.renew()
            env = {**env, "CPL_VSIL_CURL_NON_CACHED": f"/vsicurl/{signed}"}  # forget what GDAL cached of the failure
            time.sleep(policy.backoff_s(attempt))
    raise AssertionError("unreachable")


def _refusal(href: str, cfg: SourceConfig, signed: bool) -> str:
    """Why the archive refused (HTTP 403) to read `href`, and the config key to fix."""
    if signed:
        return (
            f"the archive refused {href} (HTTP 403) even with a fresh token from {cfg.stac_token_api}; check "
            f"'source.stac_sign', 'source.stac_token_api' and 'source.stac_collection' ({cfg.stac_collection!r})"
        )
    return (
        f"the archive refused {href} (HTTP 403): its assets need a signed URL; set 'source.stac_sign' = "
        "\"planetary-computer\" for Planetary Computer (SAS tokens from 'source.stac_token_api')"
    )

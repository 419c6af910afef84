"""The one COG writer (SR tiles and zone mosaics): float32 B02, B03, B04, B08 with NaN nodata and overviews."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.io import DatasetWriter
from rio_cogeo.cogeo import cog_translate
from rio_cogeo.profiles import cog_profiles

from srpipe import BANDS
from srpipe.config import MosaicConfig
from srpipe.state import atomic_path


def overview_levels(width: int, height: int, min_overview_px: int) -> int:
    """Number of 2x overviews until the longer side is at most `min_overview_px` pixels (0 for small images)."""
    return max(0, math.ceil(math.log2(max(width, height) / min_overview_px)))


@contextmanager
def cog_writer(
    path: Path, width: int, height: int, transform: Affine, epsg: int, settings: MosaicConfig, tags: dict | None = None
) -> Iterator[DatasetWriter]:
    """Yield a (4, `height`, `width`) float32 raster to fill (window by window if large); on exit it becomes a COG.

    The COG has `settings`' block size and compression (floating-point predictor), band descriptions `BANDS`, NaN
    nodata, `tags` (values as strings) and average-resampled overviews down to `settings.min_overview_px`; it appears
    at `path` atomically, and only if the block succeeds.
    """
    profile = {
        "driver": "GTiff",
        "dtype": "float32",
        "count": len(BANDS),
        "width": width,
        "height": height,
        "crs": f"EPSG:{epsg}",
        "transform": transform,
        "nodata": float("nan"),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "zlevel": 1,  # a scratch file: fast beats small
        "BIGTIFF": "IF_SAFER",
    }
    cog = cog_profiles.get(settings.compress)
    cog.update(blockxsize=settings.blocksize, blockysize=settings.blocksize, predictor=3)
    with atomic_path(path) as tmp:
        raw = tmp.with_name(tmp.name + ".raw.tif")
        try:
            with rasterio.open(raw, "w", **profile) as dst:
                yield dst
                dst.descriptions = BANDS
                dst.update_tags(**{k: str(v) for k, v in (tags or {}).items()})
            with rasterio.open(raw) as src:
                cog_translate(
                    src,
                    str(tmp),
                    cog,
                    overview_level=overview_levels(width, height, settings.min_overview_px),
                    overview_resampling="average",
                    quiet=True,
                )
        finally:
            raw.unlink(missing_ok=True)


def write_cog(
    path: Path, image: np.ndarray, transform: Affine, epsg: int, settings: MosaicConfig, tags: dict | None = None
) -> None:
    """Write (4, H, W) float32 `image` as a COG (see `cog_writer`)."""
    with cog_writer(path, image.shape[2], image.shape[1], transform, epsg, settings, tags) as dst:
        dst.write(image.astype(np.float32, copy=False))

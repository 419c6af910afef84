"""The one COG writer (SR tiles and zone mosaics): uint16 S2 DN (nodata 0) or float32 (NaN nodata), with overviews."""

from __future__ import annotations

import math
import shutil
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
from srpipe.data.s2units import QUANTIFICATION_VALUE
from srpipe.state import atomic_path

IN_MEMORY_MAX_PX = 4_000_000  # an SR tile stays in RAM through rio-cogeo; a mosaic's scratch copy goes to disk


def overview_levels(width: int, height: int, min_overview_px: int) -> int:
    """Number of 2x overviews until the longer side is at most `min_overview_px` pixels (0 for small images)."""
    return max(0, math.ceil(math.log2(max(width, height) / min_overview_px)))


@contextmanager
def cog_writer(
    path: Path,
    width: int,
    height: int,
    transform: Affine,
    epsg: int | str,
    settings: MosaicConfig,
    tags: dict | None = None,
    dtype: str = "float32",
    offset_dn: int = 0,
    descriptions: tuple[str, ...] = BANDS,
) -> Iterator[DatasetWriter]:
    """Yield a (bands, `height`, `width`) raster to fill (window by window if large); on exit it becomes a COG.

    `dtype` "uint16": S2 DN, nodata 0, GDAL scale 1e-4 and offset `offset_dn` * 1e-4 per band (so GDAL-aware tools
    read reflectance); "float32": NaN nodata. The COG has `settings`' block size and compression, band
    `descriptions`, `tags` (values as strings) and average-resampled overviews down to `settings.min_overview_px`;
    it appears at `path` atomically, and only if the block succeeds. `epsg`: a code or any CRS string rasterio reads.
    """
    integer = dtype == "uint16"
    profile = {
        "driver": "GTiff",
        "dtype": dtype,
        "count": len(descriptions),
        "width": width,
        "height": height,
        "crs": f"EPSG:{epsg}" if isinstance(epsg, int) else epsg,
        "transform": transform,
        "nodata": 0 if integer else float("nan"),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "zlevel": 1,  # a scratch file: fast beats small
        "BIGTIFF": "IF_SAFER",
    }
    cog = cog_profiles.get(settings.compress)
    cog.update(blockxsize=settings.blocksize, blockysize=settings.blocksize, predictor=2 if integer else 3)
    in_memory = width * height <= IN_MEMORY_MAX_PX
    with atomic_path(path) as tmp:
        scratch = tmp.with_name(tmp.name + ".d")  # the raw file and rio-cogeo's own scratch copy: one folder to clear
        scratch.mkdir()
        raw, out = scratch / "raw.tif", scratch / "cog.tif"
        try:
            with rasterio.open(raw, "w", **profile) as dst:
                yield dst
                dst.descriptions = descriptions
                if integer:
                    dst.scales = (1 / QUANTIFICATION_VALUE,) * len(descriptions)
                    dst.offsets = (offset_dn / QUANTIFICATION_VALUE,) * len(descriptions)
                dst.update_tags(**{k: str(v) for k, v in (tags or {}).items()})
            with rasterio.open(raw) as src:
                cog_translate(
                    src,
                    str(out),
                    cog,
                    overview_level=overview_levels(width, height, settings.min_overview_px),
                    overview_resampling="average",
                    in_memory=in_memory,  # a mosaic's copy goes to disk: memory must not grow with its area
                    allow_intermediate_compression=not in_memory,  # uncompressed, a country's copy is tens of GB
                    quiet=True,
                )
            out.replace(tmp)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def write_cog(
    path: Path,
    image: np.ndarray,
    transform: Affine,
    epsg: int | str,
    settings: MosaicConfig,
    tags: dict | None = None,
    offset_dn: int = 0,
    descriptions: tuple[str, ...] = BANDS,
) -> None:
    """Write (bands, H, W) `image` as a COG in its dtype: uint16 (S2 DN, nodata 0) or float32 (see `cog_writer`)."""
    dtype = "uint16" if image.dtype == np.uint16 else "float32"
    with cog_writer(
        path, image.shape[2], image.shape[1], transform, epsg, settings, tags, dtype, offset_dn, descriptions
    ) as dst:
        dst.write(image if dtype == "uint16" else image.astype(np.float32, copy=False))

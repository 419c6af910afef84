"""Before a `stac` download: HTTP range requests and bytes, from the items over a few tiles and one COG's header.

GDAL reads a COG's header (one request of GDAL_INGESTED_BYTES_AT_OPEN, 16 KiB), then the internal blocks that the
tile's window meets, consecutive blocks of a row merged into one range request; the bytes are an upper bound
(uncompressed blocks; DEFLATE S2 COGs are about half of it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import rasterio

from srpipe.data.grid import Tile
from srpipe.sources.cogread import gdal_env
from srpipe.sources.stac.sign import Signer

HEADER_BYTES = 16384  # GDAL_INGESTED_BYTES_AT_OPEN's default


@dataclass(frozen=True)
class StacEstimate:
    """Requests and bytes of a stac download: per-tile mean items from `sampled` tiles' searches, per asset read
    `requests_per_asset` range requests of at most `bytes_per_asset` bytes."""

    tiles: int
    sampled: int
    items: float
    assets: int
    requests_per_asset: int
    bytes_per_asset: int

    @property
    def requests(self) -> int:
        """HTTP range requests of the whole download (searches aside)."""
        return round(self.tiles * self.items * self.assets * self.requests_per_asset)

    @property
    def gigabytes(self) -> float:
        """Upper bound of the bytes read, in GB."""
        return self.tiles * self.items * self.assets * self.bytes_per_asset / 1e9

    def line(self) -> str:
        """One line for the terminal."""
        return (
            f"stac estimate: {self.tiles} tiles x {self.items:.1f} items x {self.assets} assets x "
            f"{self.requests_per_asset} range requests = {self.requests} HTTP requests, "
            f"at most {self.gigabytes:.2f} GB "
            f"(items from the search over {self.sampled} of {self.tiles} tiles; free, no processing units)"
        )


def asset_cost(href: str, tile: Tile, resolution_m: float, cfg, signer: Signer | None = None) -> tuple[int, int]:
    """(range requests, bytes) of reading `tile`'s window at `resolution_m` from the COG `href` (its header read,
    the href signed by `signer` when the archive needs it)."""
    with rasterio.Env(**gdal_env(cfg)), rasterio.open((signer or Signer()).sign(href)) as src:
        block_h, block_w = src.block_shapes[0]
        size = np.dtype(src.dtypes[0]).itemsize
        span_px = (
            (tile.bounds[2] - tile.bounds[0]) / abs(src.res[0]),
            (tile.bounds[3] - tile.bounds[1]) / abs(src.res[1]),
        )
    cols, rows = math.ceil(span_px[0] / block_w) + 1, math.ceil(span_px[1] / block_h) + 1
    return 1 + rows, HEADER_BYTES + rows * cols * block_h * block_w * size

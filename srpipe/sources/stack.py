"""What inference reads of a tile: its S2 time series, from the EOPatch on disk or generated (`synthetic`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from srpipe.config import Config
from srpipe.grid import Tile


@dataclass
class S2Stack:
    """One tile's S2 series on its buffered box: (T, h, w, 4) float32 values (NaN allowed where not `valid`),
    (T, h, w) bool `valid` (data) and `clouds` (the source's cloud mask), T `dates`, the box and its EPSG."""

    s2: np.ndarray
    valid: np.ndarray
    clouds: np.ndarray
    dates: list[dt.date]
    bounds: tuple[float, float, float, float]
    epsg: int


def read_s2(cfg: Config, tile: Tile) -> S2Stack:
    """The tile's S2 series: generated for the `synthetic` source, else from its downloaded EOPatch (checked)."""
    if cfg.source.name == "synthetic":
        from srpipe.sources.synthetic import synthetic_stack

        return synthetic_stack(cfg.source, tile)
    from srpipe import eopatch as ep

    patch = ep.load_patch(cfg.run_path, tile.tile_id, cfg.source.scale)
    return S2Stack(
        patch[ep.S2_BANDS],
        patch[ep.S2_VALID][..., 0],
        patch[ep.S2_CLOUDS][..., 0],
        [d.date() for d in patch.timestamps],
        tuple(float(v) for v in patch.bbox),
        int(patch.bbox.crs.epsg),
    )

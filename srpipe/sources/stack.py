"""What inference reads of a tile (`S2Stack`), and the two halves every EOPatch source shares: saving a fetched
EOPatch (download) and reading its S2 series back (inference)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from srpipe.config import SourceConfig
from srpipe.data.grid import Tile


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


class EOPatchSource:
    """What the EOPatch sources share: `download` saves `fetch(tile)` (checked), `s2_stack` reads it back from the
    run (`run_dir`); a subclass sets `cfg`, `run_dir` and `fetch`."""

    cfg: SourceConfig
    run_dir: Path | None

    def fetch(self, tile: Tile):
        """The tile's EOPatch (see `srpipe.eopatch`)."""
        raise NotImplementedError

    def download(self, tile: Tile, path: Path) -> dict:
        """Fetch the tile's EOPatch and save it at `path`."""
        return save_eopatch(self.fetch(tile), tile, self.cfg.scale, path)

    def s2_stack(self, tile: Tile) -> S2Stack:
        """The tile's S2 series from its downloaded EOPatch."""
        assert self.run_dir is not None, "make_source(cfg, run_dir) reads a run's EOPatches"
        return eopatch_stack(self.run_dir, tile, self.cfg.scale)


def save_eopatch(patch, tile: Tile, scale: int, path: Path) -> dict:
    """Check `patch` (see `srpipe.eopatch.check_patch`) and save it at `path` atomically; its done-record info."""
    from srpipe import eopatch as ep
    from srpipe.state import atomic_path

    ep.check_patch(patch, tile.tile_id, scale)
    with atomic_path(path) as tmp:
        patch.save(str(tmp))
    return {"s2_frames": int(patch[ep.S2_BANDS].shape[0]), "vhr_frames": int(patch[ep.VHR_BANDS].shape[0])}


def eopatch_stack(run_dir: Path, tile: Tile, scale: int) -> S2Stack:
    """The tile's S2 series from its downloaded EOPatch (checked; TileError naming the tile if missing)."""
    from srpipe import eopatch as ep

    patch = ep.load_patch(run_dir, tile.tile_id, scale)
    return S2Stack(
        patch[ep.S2_BANDS],
        patch[ep.S2_VALID][..., 0],
        patch[ep.S2_CLOUDS][..., 0],
        [d.date() for d in patch.timestamps],
        tuple(float(v) for v in patch.bbox),
        int(patch.bbox.crs.epsg),
    )

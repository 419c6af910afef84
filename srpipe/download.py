"""Download: one tile from the configured source -> a checked EOPatch in `eopatches/<tile_id>/`, written atomically."""

from __future__ import annotations

from srpipe import eopatch as ep
from srpipe.config import Config
from srpipe.grid import tiles_by_id
from srpipe.sources import make_source
from srpipe.state import atomic_path


def download_tile(cfg: Config, tile_id: str) -> dict:
    """Fetch `tile_id` from `cfg.source` and save its EOPatch; returns what the done-marker records."""
    tile = tiles_by_id(cfg.run_path)[tile_id]
    patch = make_source(cfg.source, cfg.run_path).fetch(tile)
    ep.check_patch(patch, tile_id, cfg.source.scale)
    with atomic_path(cfg.layout.eopatch(tile_id)) as tmp:
        patch.save(str(tmp))
    return {"s2_frames": int(patch[ep.S2_BANDS].shape[0]), "vhr_frames": int(patch[ep.VHR_BANDS].shape[0])}

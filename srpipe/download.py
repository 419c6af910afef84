"""Download: one tile from the configured source -> a checked EOPatch in `eopatches/<tile_id>/`, written atomically.

The `synthetic` source has nothing to download: its stacks are generated where they are read, so its tiles only
record how many frames they will have (the stage stays in the chain and costs nothing).
"""

from __future__ import annotations

from srpipe import eopatch as ep
from srpipe.config import Config
from srpipe.grid import tiles_by_id
from srpipe.sources import make_source
from srpipe.state import atomic_path


def download_tile(cfg: Config, tile_id: str) -> dict:
    """Fetch `tile_id` from `cfg.source` and save its EOPatch; returns what the done-marker records."""
    tile = tiles_by_id(cfg.run_path)[tile_id]
    if cfg.source.name == "synthetic":
        from srpipe.sources.synthetic import lr_grid_shape, synthetic_dates

        shape = lr_grid_shape(cfg.source, tile)  # a box of whole pixels, checked before infer generates it
        return {"s2_frames": len(synthetic_dates(cfg.source)), "s2_shape": list(shape), "synthetic": True}
    patch = make_source(cfg.source, cfg.run_path).fetch(tile)
    ep.check_patch(patch, tile_id, cfg.source.scale)
    with atomic_path(cfg.layout.eopatch(tile_id)) as tmp:
        patch.save(str(tmp))
    return {"s2_frames": int(patch[ep.S2_BANDS].shape[0]), "vhr_frames": int(patch[ep.VHR_BANDS].shape[0])}

"""Download: one tile from the configured source (`Source.download`) -> its EOPatch in `eopatches/<tile_id>/`.

A source generated where it is read (`synthetic`) writes nothing: its record only says what the tile will hold.
"""

from __future__ import annotations

from srpipe.config import Config
from srpipe.data.grid import tiles_by_id
from srpipe.sources import make_source


def download_tile(cfg: Config, tile_id: str) -> dict:
    """Fetch `tile_id` from `cfg.source` and save its EOPatch; returns what the done-marker records."""
    tile = tiles_by_id(cfg.run_path)[tile_id]
    return make_source(cfg.source, cfg.run_path).download(tile, cfg.layout.eopatch(tile_id))

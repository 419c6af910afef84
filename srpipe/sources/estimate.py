"""What `srpipe download` prints before it starts: the source's own cost estimate (`Source.estimate`)."""

from __future__ import annotations

from srpipe.config import Config
from srpipe.data.grid import read_grid
from srpipe.sources import make_source


def estimate_line(cfg: Config, tile_ids: list[str] | None = None) -> str:
    """One line: the cost of downloading `tile_ids` (default: every tile of the grid) from the run's source."""
    tiles = read_grid(cfg.run_path)
    if tile_ids:
        tiles = [t for t in tiles if t.tile_id in set(tile_ids)]
    return make_source(cfg.source, cfg.run_path).estimate(tiles)

"""What `srpipe download` prints before it starts: each remote source's cost, a note for offline sources."""

from __future__ import annotations

from srpipe.config import Config


def estimate_line(cfg: Config, tile_ids: list[str] | None = None) -> str:
    """Processing units for `sentinelhub`, HTTP requests and bytes for `stac`, a note for offline sources."""
    if cfg.source.name == "stac":
        from srpipe.sources.staccost import estimate

        return estimate(cfg, tile_ids).line()
    if cfg.source.name == "sentinelhub":
        from srpipe.sources.shcost import estimate

        return estimate(cfg, tile_ids).line()
    return f"{cfg.source.name} source: offline, no requests and no processing units"

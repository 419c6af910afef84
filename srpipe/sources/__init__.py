"""Sources of EOPatches: `sample` (offline), `sentinelhub` (S2 + BYOC labels); each maps a Tile to an EOPatch.

`synthetic` makes no EOPatch: `srpipe.sources.synthetic.synthetic_stack` generates a tile's S2 stack where it is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from eolearn.core import EOPatch

from srpipe.config import SourceConfig
from srpipe.errors import ConfigError
from srpipe.grid import Tile
from srpipe.layout import RunLayout


class Source(Protocol):
    """Anything that turns a tile into an EOPatch holding the features of `srpipe.eopatch.REQUIRED`."""

    def fetch(self, tile: Tile) -> EOPatch:
        """Return the tile's EOPatch (S2 stack, label stack, masks, timestamps, bbox)."""
        ...


def make_source(cfg: SourceConfig, run_dir: str | Path | None = None) -> Source:
    """The source named by `cfg.name`; `run_dir` holds a network source's download cache."""
    if cfg.name == "sample":
        from srpipe.sources.sample import SampleSource

        return SampleSource(cfg)
    if cfg.name == "sentinelhub":
        from srpipe.sources.sentinelhub import SentinelHubSource

        return SentinelHubSource(cfg, RunLayout(Path(run_dir)).download_cache(cfg.name) if run_dir else None)
    if cfg.name == "synthetic":
        raise ConfigError(
            "source.name = 'synthetic' generates S2 stacks only (no EOPatch, no labels): curate, train and evaluate "
            "need the 'sample' or 'sentinelhub' source; a synthetic run is download, infer, mosaic and catalog"
        )
    raise ValueError(f"unknown source {cfg.name!r}")  # unreachable: the config allows only known names

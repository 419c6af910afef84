"""Sources of EOPatches: `sample` (embedded, offline). Each maps a Tile to an EOPatch in the download contract."""

from __future__ import annotations

from typing import Protocol

from eolearn.core import EOPatch

from srpipe.config import SourceConfig
from srpipe.grid import Tile


class Source(Protocol):
    """Anything that turns a tile into an EOPatch holding the features of `srpipe.eopatch.REQUIRED`."""

    def fetch(self, tile: Tile) -> EOPatch:
        """Return the tile's EOPatch (S2 stack, label stack, masks, timestamps, bbox)."""
        ...


def make_source(cfg: SourceConfig) -> Source:
    """The source named by `cfg.name`."""
    if cfg.name == "sample":
        from srpipe.sources.sample import SampleSource

        return SampleSource(cfg)
    raise ValueError(f"unknown source {cfg.name!r}")  # unreachable: the config allows only known names

"""Sources: `sample` (offline, simulated from one real S2 scene), `sentinelhub` (S2 + BYOC labels), `stac` (free S2
COGs from a STAC archive + the user's own label rasters) and `synthetic` (seeded S2 stacks anywhere, no labels), each
behind the one `Source` protocol.

Nothing outside this package asks a source's name: plan asks its coverage, download its cost estimate and its
EOPatch (or record), inference its S2 stacks, the chain whether it has labels, infer the radiometric offset of its
values.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Protocol

import geopandas as gpd
import shapely

from srpipe.config import SourceConfig
from srpipe.data.grid import Tile
from srpipe.layout import RunLayout
from srpipe.sources.stack import S2Stack


class Source(Protocol):
    """What every source answers. `cfg`: its settings with the source's own defaults resolved (e.g. the sample's
    `lr_resolution_m` from its scene's pixels); `has_labels`: it delivers VHR labels (curate, train and evaluate need
    them); `paid`: its requests cost; `remote`: it reads over the network (download prints the estimate first)."""

    cfg: SourceConfig
    has_labels: bool
    paid: bool
    remote: bool

    def describe(self) -> str:
        """The source in a few words, for messages (e.g. "the sample scene /path")."""
        ...

    def coverage(self, aoi: shapely.Geometry) -> gpd.GeoSeries | None:
        """Where it delivers whole tiles over `aoi` (EPSG:4326): one geometry with its CRS; None = anywhere."""
        ...

    def estimate(self, tiles: list[Tile]) -> str:
        """One line: what downloading `tiles` costs (requests, processing units, bytes), or that it costs nothing."""
        ...

    def download(self, tile: Tile, path: Path) -> dict:
        """Fetch `tile` into an EOPatch at `path` (or nothing, for a source generated where it is read); the done
        record's info."""
        ...

    def s2_stack(self, tile: Tile) -> S2Stack:
        """The tile's S2 series on its buffered box (from its downloaded EOPatch, or generated)."""
        ...

    def radiometric_offset(self, date: dt.date) -> tuple[int, str]:
        """(the DN offset of its S2 values on `date`, why in words): reflectance = (DN + offset) / 10000."""
        ...


def make_source(cfg: SourceConfig, run_dir: str | Path | None = None) -> Source:
    """The source `cfg.name` names; `run_dir` holds its downloads (and, for an EOPatch source, what it reads back)."""
    run = Path(run_dir) if run_dir else None
    if cfg.name == "sample":
        from srpipe.sources.sample.source import SampleSource

        return SampleSource(cfg, run)
    if cfg.name == "sentinelhub":
        from srpipe.sources.sentinelhub.source import SentinelHubSource

        return SentinelHubSource(cfg, RunLayout(run).download_cache(cfg.name) if run else None, run)
    if cfg.name == "stac":
        from srpipe.sources.stac.source import StacSource

        return StacSource(cfg, RunLayout(run).download_cache(cfg.name) if run else None, run)
    if cfg.name == "synthetic":
        from srpipe.sources.synthetic.source import SyntheticSource

        return SyntheticSource(cfg)
    raise ValueError(f"unknown source {cfg.name!r}")  # unreachable: the config allows only known names

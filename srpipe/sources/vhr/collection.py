"""Label rasters listed by a STAC collection of the user's own (`source.vhr_stac`): a static catalog or collection
(pystac), or a STAC API collection `<api root>/collections/<id>` (pystac-client, retried). Each item's footprint
(geometry, else bbox) and date (`datetime`, else `start_datetime`) come from the catalog, so plan opens no raster; the
asset `source.vhr_stac_asset` of each item (a local path or an http(s) URL) is then read as a `vhr_files` file is."""

from __future__ import annotations

import re

import shapely

from srpipe.config import ConfigError, SourceConfig
from srpipe.sources.stac.search import api_io
from srpipe.sources.vhr.files import VhrFile, VhrFiles

_API_COLLECTION = re.compile(r"^(https?://.+)/collections/([^/]+?)/?$")  # a STAC API's collection, not a .json file


def label_rasters(cfg: SourceConfig) -> VhrFiles:
    """The label rasters of `source.vhr_stac` or `source.vhr_files` (exactly one of them set)."""
    if cfg.vhr_stac and cfg.vhr_files:
        raise ConfigError("config keys 'source.vhr_files' and 'source.vhr_stac' both name the labels; set only one")
    if not cfg.vhr_stac:
        return VhrFiles(cfg)
    return VhrFiles(cfg, stac_files(cfg), f"'source.vhr_stac' ({cfg.vhr_stac})")


def stac_files(cfg: SourceConfig) -> list[VhrFile]:
    """One VhrFile per item of `cfg.vhr_stac`: a STAC API collection's items (pystac-client, paged), or a static
    catalog's or collection's (pystac; sub-catalogs too)."""
    import pystac
    from pystac_client import Client

    api = _API_COLLECTION.match(cfg.vhr_stac) if not cfg.vhr_stac.endswith(".json") else None
    try:
        if api:
            items = list(Client.open(api.group(1), stac_io=api_io(cfg)).get_collection(api.group(2)).get_items())
        else:
            items = list(pystac.read_file(cfg.vhr_stac).get_items(recursive=True))
    except Exception as exc:
        raise ConfigError(
            f"config key 'source.vhr_stac' = {cfg.vhr_stac!r} is not a readable STAC catalog or collection "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    if not items:
        raise ConfigError(f"config key 'source.vhr_stac' = {cfg.vhr_stac!r} lists no item; add the label items")
    return [item_file(item, cfg.vhr_stac_asset) for item in items]


def item_file(item, asset_key: str) -> VhrFile:
    """The label raster of one pystac Item: its `asset_key` asset's absolute href, date and footprint (EPSG:4326)."""
    asset = item.assets.get(asset_key)
    if asset is None:
        have = ", ".join(sorted(item.assets)) or "none"
        raise ConfigError(
            f"STAC item {item.id} of 'source.vhr_stac' has no asset {asset_key!r} (it has: {have}); set "
            "'source.vhr_stac_asset' to the key of its label raster"
        )
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise ConfigError(f"STAC item {item.id} of 'source.vhr_stac' has no datetime (nor start_datetime); add one")
    if item.geometry:
        footprint = shapely.geometry.shape(item.geometry)
    elif item.bbox:
        footprint = shapely.box(*item.bbox[:2], *item.bbox[-2:])  # a 3D bbox holds heights at 2 and 5
    else:
        raise ConfigError(f"STAC item {item.id} of 'source.vhr_stac' has neither geometry nor bbox; add its footprint")
    return VhrFile(asset.get_absolute_href(), when.date(), footprint)

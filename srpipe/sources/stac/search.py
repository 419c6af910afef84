"""S2 items from a STAC API (pystac-client, retried by urllib3) or a static catalog (pystac), as typed records, with
the responses cached on disk so that a re-run does not search twice."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import shapely

from srpipe.config import ConfigError, SourceConfig
from srpipe.errors import SrpipeError
from srpipe.state import atomic_path

RETRY_STATUSES = (429, 500, 502, 503, 504)


class StacError(SrpipeError):
    """A STAC archive failed or refused a request; the message names the archive and the fix."""


@dataclass(frozen=True)
class S2Item:
    """One S2 item: id, acquisition time (UTC), eo:cloud_cover in [0, 1], footprint (EPSG:4326), the hrefs of B02,
    B03, B04, B08 and SCL (`source.stac_assets`' order), and the dict the archive served (for its units)."""

    id: str
    datetime: dt.datetime
    cloud_cover: float
    footprint: shapely.Geometry
    hrefs: tuple[str, ...]
    raw: dict


def to_item(raw: dict, assets: tuple[str, ...]) -> S2Item:
    """The record of a served item dict; StacError naming a missing asset key and the config key."""
    missing = [a for a in assets if a not in raw.get("assets", {})]
    if missing:
        have = ", ".join(sorted(raw.get("assets", {})))
        raise StacError(
            f"STAC item {raw.get('id')} has no asset {missing} (it has: {have}); set 'source.stac_assets' to its "
            "keys of B02, B03, B04, B08 and SCL"
        )
    props = raw["properties"]
    when = dt.datetime.fromisoformat(props["datetime"].replace("Z", "+00:00"))
    return S2Item(
        raw["id"],
        when,
        float(props.get("eo:cloud_cover", 0.0)) / 100,
        shapely.geometry.shape(raw["geometry"]),
        tuple(raw["assets"][a]["href"] for a in assets),
        raw,
    )


def http_retry(cfg: SourceConfig):
    """urllib3's retries of 429/5xx and dropped connections per `source.max_retries` (backoff, Retry-After), for
    every method (POST /search too: a search is safe to repeat)."""
    from urllib3 import Retry

    return Retry(
        total=cfg.max_retries,
        backoff_factor=cfg.retry_base_s,
        backoff_max=cfg.retry_max_s,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=None,
        respect_retry_after_header=True,
    )


def api_io(cfg: SourceConfig):
    """pystac-client's HTTP layer with `http_retry`."""
    from pystac_client.stac_api_io import StacApiIO

    return StacApiIO(max_retries=http_retry(cfg), timeout=cfg.timeout_s)


def _api_search(cfg: SourceConfig, bbox: tuple[float, ...], interval: str) -> list[dict]:
    """Item dicts from the STAC API `cfg.stac_api` (pystac-client; 429/5xx and dropped connections retried)."""
    from pystac_client import Client

    try:
        client = Client.open(cfg.stac_api, stac_io=api_io(cfg))
        search = client.search(
            collections=[cfg.stac_collection],
            bbox=bbox,
            datetime=interval,
            query={"eo:cloud_cover": {"lte": cfg.s2_max_cloud_cover * 100}},
            limit=100,
        )
        return list(search.items_as_dicts())
    except Exception as exc:
        raise StacError(
            f"the STAC API {cfg.stac_api} failed ({type(exc).__name__}: {exc}); check 'source.stac_api' and "
            f"'source.stac_collection' ({cfg.stac_collection!r}) or re-run later (finished tiles are kept)"
        ) from exc


def _catalog_search(cfg: SourceConfig, bbox: tuple[float, ...], start: dt.datetime, end: dt.datetime) -> list[dict]:
    """Item dicts of the static catalog `cfg.stac_catalog` in `cfg.stac_collection`, over `bbox` in [start, end]."""
    import pystac

    try:
        root = pystac.read_file(cfg.stac_catalog)
    except Exception as exc:
        raise ConfigError(
            f"config key 'source.stac_catalog' = {cfg.stac_catalog!r} is not a readable STAC catalog or collection "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    box = shapely.box(*bbox)
    out = []
    for item in root.get_items(recursive=True):
        if item.collection_id not in (None, cfg.stac_collection) or item.datetime is None:
            continue
        when = item.datetime.astimezone(dt.UTC)
        if start <= when <= end and shapely.geometry.shape(item.geometry).intersects(box):
            item.make_asset_hrefs_absolute()
            out.append(item.to_dict(include_self_link=False, transform_hrefs=False))
    return out


def search_items(cfg: SourceConfig, bbox: tuple[float, ...], cache_dir: Path | None) -> list[S2Item]:
    """S2 items over `bbox` (EPSG:4326) in `time_interval` with cloud cover <= `s2_max_cloud_cover`, by time;
    the served dicts cached in `cache_dir/search/` (a re-run reads them back)."""
    start = dt.datetime.fromisoformat(cfg.time_interval[0]).replace(tzinfo=dt.UTC)
    end = dt.datetime.fromisoformat(cfg.time_interval[1]).replace(tzinfo=dt.UTC) + dt.timedelta(days=1)
    interval = f"{start.isoformat().replace('+00:00', 'Z')}/{end.isoformat().replace('+00:00', 'Z')}"
    where = cfg.stac_api or cfg.stac_catalog
    key = json.dumps([where, cfg.stac_collection, [round(v, 6) for v in bbox], interval, cfg.s2_max_cloud_cover])
    cached = cache_dir / "search" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json" if cache_dir else None
    if cached is not None and cached.exists():
        raw = json.loads(cached.read_text())
    else:
        raw = _api_search(cfg, bbox, interval) if cfg.stac_api else _catalog_search(cfg, bbox, start, end)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as tmp:
                tmp.write_text(json.dumps(raw))
    items = [to_item(r, cfg.stac_assets) for r in raw]
    items = [i for i in items if i.cloud_cover <= cfg.s2_max_cloud_cover and start <= i.datetime < end]
    return sorted(items, key=lambda i: (i.datetime, i.id))

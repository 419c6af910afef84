"""Mosaic's units, torch-free for the registry: one per UTM zone and date ('<epsg>_<YYYY-MM-DD>'), and which of
infer's tiles each reads."""

from __future__ import annotations

from collections.abc import Callable

from srpipe.config import Config
from srpipe.infer.record import InferRecord

ALL_DATES = "all"  # the date part of a mosaic unit whose dates were unknown when it was listed


def mosaic_unit_name(epsg: int | str, date: str) -> str:
    """The mosaic unit of one UTM zone and date: '<epsg>_<YYYY-MM-DD>' (or '<epsg>_all')."""
    return f"{epsg}_{date}"


def mosaic_units(cfg: Config, records_of: Callable[[str], dict[str, dict]]) -> list[str]:
    """Zone x date units: from the dates infer wrote (`records_of('infer')`), else from `infer.dates` before it ran."""
    written = [InferRecord.zone_dates(t, r) for t, r in records_of("infer").items()]
    found = {mosaic_unit_name(epsg, d) for epsg, dates in written for d in dates}
    if found:
        return sorted(found)
    from srpipe.data.grid import read_grid

    zones = sorted({t.epsg for t in read_grid(cfg.run_path)})
    dates = cfg.infer.dates
    wanted = [cfg.as_of_date.isoformat()] if dates == "latest" else [ALL_DATES] if dates == "all" else list(dates)
    return [mosaic_unit_name(z, d) for z in zones for d in wanted]


def mosaic_reads(unit: str, infer_records: dict[str, dict]) -> list[str]:
    """The inferred tiles a zone x date mosaic reads: those of its zone with an output on its date."""
    epsg, _, date = unit.partition("_")
    zones = {t: InferRecord.zone_dates(t, r) for t, r in infer_records.items()}
    return sorted(t for t, (e, dates) in zones.items() if str(e) == epsg and (date == ALL_DATES or date in dates))

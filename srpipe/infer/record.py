"""What infer hands to mosaic: one typed, versioned record per finished tile, kept in the tile's done marker.

Infer writes it with `InferRecord.info()`; mosaic reads it with `InferRecord.read`, its units with `zone_dates`,
which refuse a record of another version (or a broken one) with an error naming the tile and the fix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from srpipe.errors import StageError

VERSION = 1  # bump when a field's meaning changes; older records are refused, never misread


@dataclass(frozen=True)
class InferRecord:
    """One inferred tile: its UTM zone, the ISO dates written, per date the ISO frame dates used and the DN offset
    (S2's own units), the dates skipped and why, the model and output dtype, seconds per part, and the SHA-256 of
    each COG written (a COG has no checksum of its own: a flipped bit in it would be read silently)."""

    tile_id: str
    epsg: int
    dates: tuple[str, ...]
    frames: dict[str, list[str]] = field(default_factory=dict)
    offset_dn: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    model: str = ""
    output_dtype: str = "uint16"
    timing_s: dict[str, float] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)  # {file name: SHA-256} of the COGs written (mosaic checks)

    def info(self) -> dict[str, Any]:
        """The done-marker fields of this record (with `infer_record`: its version)."""
        out = dataclasses.asdict(self)
        del out["tile_id"]  # the marker's file name is the tile
        return {"infer_record": VERSION, **out, "dates": list(self.dates)}

    @classmethod
    def read(cls, tile_id: str, record: dict[str, Any]) -> InferRecord:
        """The record in tile `tile_id`'s done marker; StageError naming the tile when it is of another version."""
        if record.get("infer_record") != VERSION:
            raise StageError(
                f"infer tile {tile_id}: its done record is of version {record.get('infer_record')!r}, this srpipe "
                f"reads version {VERSION}; re-run `srpipe infer --tiles {tile_id}` (delete _state/infer/"
                f"{tile_id}.done first)"
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"tile_id"}
        try:
            values = {k: record[k] for k in names if k in record}
            values["dates"] = tuple(values["dates"])
            return cls(tile_id=tile_id, **values)
        except (KeyError, TypeError) as exc:
            raise StageError(f"infer tile {tile_id}: its done record lacks {exc}; re-run infer on it") from exc

    @staticmethod
    def zone_dates(tile_id: str, record: dict[str, Any]) -> tuple[int, list[str]]:
        """(EPSG, ISO dates) of a done record: what mosaic's units need, checked like `read` but not parsed whole."""
        if record.get("infer_record") != VERSION or "epsg" not in record or "dates" not in record:
            InferRecord.read(tile_id, record)  # raises the error naming the tile
        return int(record["epsg"]), record["dates"]

"""Shadow filter (reduce side): a cloudy label timestamp on one tile flags its neighbours at that timestamp."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def cloudy_timestamps(covers: Mapping[str, Mapping[str, float]], min_cover: float) -> dict[str, list[str]]:
    """{tile_id: [label dates]} whose cloud cover (share, 0..1) is above `min_cover`, from {tile_id: {date: cover}}."""
    return {tile: sorted(d for d, c in dates.items() if c > min_cover) for tile, dates in covers.items()}


def shadow_flags(
    covers: Mapping[str, Mapping[str, float]], neighbours: Mapping[str, Sequence[str]], min_cover: float
) -> dict[tuple[str, str], list[str]]:
    """{(tile_id, date): [cloudy neighbours that cast the flag]} for every neighbour of a cloudy (tile, date).

    A tile is flagged at a date only when it has a label at that date (it appears in `covers` with that date).
    """
    flags: dict[tuple[str, str], list[str]] = {}
    for tile, dates in cloudy_timestamps(covers, min_cover).items():
        for date in dates:
            for other in neighbours.get(tile, ()):
                if date in covers.get(other, {}):
                    flags.setdefault((other, date), []).append(tile)
    return {key: sorted(value) for key, value in sorted(flags.items())}

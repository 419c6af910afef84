"""Cost before work: Process API requests and Sentinel Hub processing units (PU) of a run's download.

The service's published rule (docs.sentinel-hub.com/api/latest/api/overview/processing-unit): 1 PU is 512 x 512 px,
3 input bands (dataMask is free), one sample per pixel, an output of at most 16 bits; the area factor is at least
0.01, a 32-bit float output doubles the cost, and a request costs at least 0.005 PU.
"""

from __future__ import annotations

from dataclasses import dataclass

from srpipe.data.grid import Tile

SAMPLE_TILES = 3  # tiles whose catalog dates stand for every tile (the catalog is free, but not instant)


def request_pu(width: int, height: int, n_bands: int, float32: bool, samples: int = 1) -> float:
    """PU of one Process API request of width x height px, `n_bands` input bands (no dataMask), `samples` dates."""
    area = max(width * height / (512 * 512), 0.01)
    return max(area * n_bands / 3 * (2 if float32 else 1) * samples, 0.005)


@dataclass(frozen=True)
class Estimate:
    """Requests and PU of a download: per-tile mean S2 and label dates from `sampled` tiles' catalog searches."""

    tiles: int
    sampled: int
    s2_dates: float
    vhr_dates: float
    s2_pu: float  # one S2 request
    vhr_pu: float  # one label request

    @property
    def requests(self) -> int:
        """Process API requests of the whole download."""
        return round(self.tiles * (self.s2_dates + self.vhr_dates))

    @property
    def pu(self) -> float:
        """Processing units of the whole download."""
        return self.tiles * (self.s2_dates * self.s2_pu + self.vhr_dates * self.vhr_pu)

    def line(self) -> str:
        """One line for the terminal."""
        return (
            f"sentinelhub estimate: {self.tiles} tiles x ({self.s2_dates:.1f} S2 + {self.vhr_dates:.1f} label dates) "
            f"= {self.requests} Process API requests, {self.pu:.1f} processing units "
            f"({self.s2_pu:.4f} PU per S2 request, {self.vhr_pu:.4f} per label request; "
            f"dates from the catalog over {self.sampled} of {self.tiles} tiles)"
        )


def spread(tiles: list[Tile], n: int) -> list[Tile]:
    """Up to `n` tiles spread evenly through the grid order."""
    if len(tiles) <= n:
        return tiles
    return [tiles[round(i * (len(tiles) - 1) / (n - 1))] for i in range(n)] if n > 1 else tiles[:1]

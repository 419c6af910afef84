"""srpipe: multi-temporal Sentinel-2 super-resolution (HighRes-Net, 4x) from tiles to country mosaics."""

import warnings as _warnings

__version__ = "0.1.0"

BANDS = ("B02", "B03", "B04", "B08")  # band order of every array: blue, green, red, NIR
STD_BANDS = tuple(f"{b}_std" for b in BANDS)  # the self-ensemble spread's bands (`infer.uncertainty`), same order


def level_name(level: float) -> str:
    """'hw90' for 0.9: the name of an interval level's half-width (band suffix, STAC)."""
    return f"hw{round(level * 100):02d}"


def twin_bands(levels: tuple[float, ...]) -> tuple[str, ...]:
    """The bands of `<date>.std.tif`: the spread's, then each interval level's half-width ("B02_hw90", ...)."""
    return STD_BANDS + tuple(f"{b}_{level_name(level)}" for level in levels for b in BANDS)


# eo-learn 1.5.7 -> fs -> pkg_resources warns on every import; it is known and harmless (setuptools<81 is pinned)
_warnings.filterwarnings("ignore", message=".*pkg_resources.*")
_warnings.filterwarnings("ignore", message=".*declare_namespace.*")
# label (VHR) stacks carry their own dates (meta_info/vhr_timestamps): eo-learn's check against the S2 dates misfires
_warnings.filterwarnings("ignore", message=".*Missmatch in temporal dimensions.*")

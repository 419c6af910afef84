"""The EOPatch contract between download and the later stages: feature names, shapes, and a loader that checks them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
from eolearn.core import EOPatch, FeatureType

from srpipe.errors import TileError
from srpipe.layout import RunLayout

# (T, h, w, 4) float32 S2 reflectance at the low resolution, bands B02, B03, B04, B08
S2_BANDS = (FeatureType.DATA, "S2_BANDS")
# (T, h, w, 1) bool: True where the source's cloud mask says cloud
S2_CLOUDS = (FeatureType.MASK, "S2_CLM")
# (T, h, w, 1) bool: True where the S2 pixel holds data
S2_VALID = (FeatureType.MASK, "S2_DATA")
# (T', H, W, 4) float32 label (VHR) values in the label's own units, H = scale * h; timestamps in meta_info
VHR_BANDS = (FeatureType.DATA, "VHR_BANDS")
# (T', H, W, 1) bool: True where the label holds data
VHR_VALID = (FeatureType.MASK, "VHR_DATA")
VHR_TIMESTAMPS = "vhr_timestamps"  # meta_info key: ISO dates of VHR_BANDS' first axis
# ground truth that only the sample source knows (what it planted); curation never reads these
TRUTH_S2_CLOUDS = (FeatureType.MASK, "TRUTH_S2_CLOUDS")
TRUTH_S2_SHADOWS = (FeatureType.MASK, "TRUTH_S2_SHADOWS")
TRUTH_VHR_CLOUDS = (FeatureType.MASK, "TRUTH_VHR_CLOUDS")
TRUTH_VHR_SHADOWS = (FeatureType.MASK, "TRUTH_VHR_SHADOWS")

REQUIRED = (S2_BANDS, S2_CLOUDS, S2_VALID, VHR_BANDS, VHR_VALID)


def patch_dir(run_dir: str | Path, tile_id: str) -> Path:
    """Folder of a tile's EOPatch in the run directory."""
    return RunLayout(Path(run_dir)).eopatch(tile_id)


def vhr_dates(patch: EOPatch) -> list[dt.datetime]:
    """Dates of the label stack, in order of VHR_BANDS' first axis."""
    return [dt.datetime.fromisoformat(s) for s in patch.meta_info[VHR_TIMESTAMPS]]


def _check_stamps(patch: EOPatch, tile_id: str, fix: str) -> None:
    """TileError unless meta_info/vhr_timestamps is a list of ISO dates, one per label frame."""
    stamps = patch.meta_info[VHR_TIMESTAMPS]
    if not isinstance(stamps, list | tuple) or not all(isinstance(s, str) for s in stamps):
        raise TileError(tile_id, f"meta_info/{VHR_TIMESTAMPS} = {stamps!r} is not a list of ISO dates; {fix}")
    for stamp in stamps:
        try:
            dt.datetime.fromisoformat(stamp)
        except ValueError:
            raise TileError(tile_id, f"meta_info/{VHR_TIMESTAMPS} holds {stamp!r}, not an ISO date; {fix}") from None
    if len(stamps) != patch[VHR_BANDS].shape[0]:
        raise TileError(tile_id, f"{patch[VHR_BANDS].shape[0]} label frames but {len(stamps)} dates; {fix}")


def _check_arrays(patch: EOPatch, tile_id: str, fix: str) -> None:
    """TileError unless the bands are real numbers (T, h, w, 4) and each mask is bool (T, h, w, 1) on its bands."""
    for name, feature in (("S2_BANDS", S2_BANDS), ("VHR_BANDS", VHR_BANDS)):
        array = patch[feature]
        if array.dtype.kind not in "fiu":
            raise TileError(tile_id, f"{name} has dtype {array.dtype}, expected float32 reflectance; {fix}")
        if array.ndim != 4 or array.shape[-1] != 4:
            raise TileError(
                tile_id, f"{name} has shape {array.shape}, expected (T, h, w, 4) (B02, B03, B04, B08); {fix}"
            )
    for name, mask, bands in (("S2_CLM", S2_CLOUDS, S2_BANDS), ("S2_DATA", S2_VALID, S2_BANDS),
                              ("VHR_DATA", VHR_VALID, VHR_BANDS)):  # fmt: skip
        if patch[mask].dtype != bool or patch[mask].shape != (*patch[bands].shape[:3], 1):
            raise TileError(
                tile_id,
                f"{name} is {patch[mask].dtype} {patch[mask].shape}, expected bool {(*patch[bands].shape[:3], 1)}; "
                f"{fix}",
            )


def check_patch(patch: EOPatch, tile_id: str, scale: int) -> None:
    """Raise TileError naming the tile and the fix when `patch` breaks the contract above."""
    fix = "delete it and re-run `srpipe download`"
    for feature in REQUIRED:
        if feature not in patch:
            raise TileError(tile_id, f"EOPatch lacks {feature[0].value}/{feature[1]}; {fix}")
    if VHR_TIMESTAMPS not in patch.meta_info:
        raise TileError(tile_id, f"EOPatch lacks meta_info/{VHR_TIMESTAMPS}; {fix}")
    _check_arrays(patch, tile_id, fix)
    s2, vhr = patch[S2_BANDS], patch[VHR_BANDS]
    if len(patch.timestamps or []) != s2.shape[0]:
        raise TileError(tile_id, f"{s2.shape[0]} S2 frames but {len(patch.timestamps or [])} timestamps; {fix}")
    _check_stamps(patch, tile_id, fix)
    if vhr.shape[1:3] != (s2.shape[1] * scale, s2.shape[2] * scale):
        raise TileError(tile_id, f"label {vhr.shape[1:3]} is not {scale}x the S2 grid {s2.shape[1:3]}; {fix}")
    for name, array, valid in (("S2_BANDS", s2, patch[S2_VALID]), ("VHR_BANDS", vhr, patch[VHR_VALID])):
        bad = ~np.isfinite(array) & valid
        if bad.any():
            raise TileError(
                tile_id,
                f"{name} holds {int(bad.sum())} NaN/inf values inside its valid-data mask; "
                f"mark them invalid in the source or {fix}",
            )


def load_patch(run_dir: str | Path, tile_id: str, scale: int) -> EOPatch:
    """Load and check a tile's EOPatch; a missing or unreadable one raises TileError with the fix."""
    path = patch_dir(run_dir, tile_id)
    if not path.exists():
        raise TileError(tile_id, f"no EOPatch at {path}; run `srpipe download` first")
    try:
        patch = EOPatch.load(str(path), lazy_loading=True)
        for feature in patch.get_features():  # one at a time: eo-learn loads in threads, whose np.load races
            patch[feature] = patch[feature]
    except SystemError:  # that race (ast in threads, CPython 3.11 gh-106905) is an interpreter fault, not a bad file
        raise
    except Exception as exc:
        raise TileError(
            tile_id,
            f"EOPatch at {path} cannot be read ({type(exc).__name__}: {exc}); "
            f"delete it and its marker _state/download/{tile_id}.done, then re-run `srpipe download`",
        ) from exc
    check_patch(patch, tile_id, scale)
    for bands, valid in ((S2_BANDS, S2_VALID), (VHR_BANDS, VHR_VALID)):
        patch[bands] = np.where(patch[valid], patch[bands], 0).astype(np.float32)  # NaN allowed only where invalid
    return patch

"""The EOPatch contract: every broken patch is a TileError naming the tile and the fix."""

import numpy as np
import pytest
from eolearn.core import EOPatch

from srpipe import eopatch as ep
from srpipe.config import SourceConfig
from srpipe.errors import TileError
from srpipe.sources.sample import SampleSource
from tests.test_sources_sample import tile


@pytest.fixture(scope="module")
def patch() -> EOPatch:
    return SampleSource(SourceConfig(lr_resolution_m=40.0, n_dates=4, n_vhr_dates=1)).fetch(tile())


def test_missing_band_feature(patch):
    broken = patch.copy()
    del broken[ep.VHR_BANDS]
    with pytest.raises(
        TileError, match="tile T1: EOPatch lacks data/VHR_BANDS; delete it and re-run `srpipe download`"
    ):
        ep.check_patch(broken, "T1", 4)


def test_missing_band_in_the_stack(patch):
    broken = patch.copy()
    broken[ep.S2_BANDS] = patch[ep.S2_BANDS][..., :3]
    with pytest.raises(TileError, match=r"tile T1: S2_BANDS has shape \(4, 60, 60, 3\).*B02, B03, B04, B08"):
        ep.check_patch(broken, "T1", 4)


def test_nan_inside_the_valid_mask_is_an_error_and_outside_it_is_zeroed(patch, tmp_path):
    broken = patch.copy(deep=True)
    broken[ep.S2_BANDS][0, 0, 0, 0] = np.nan
    with pytest.raises(TileError, match="S2_BANDS holds 1 NaN/inf values"):
        ep.check_patch(broken, "T1", 4)
    broken[ep.S2_VALID][0, 0, 0, 0] = False
    broken.save(str(ep.patch_dir(tmp_path, "T1")))
    loaded = ep.load_patch(tmp_path, "T1", 4)
    assert loaded[ep.S2_BANDS][0, 0, 0, 0] == 0


def test_corrupt_patch_on_disk_names_the_tile_and_the_fix(patch, tmp_path):
    patch.save(str(ep.patch_dir(tmp_path, "T2")))
    (ep.patch_dir(tmp_path, "T2") / "data" / "S2_BANDS.npy.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(TileError, match=r"tile T2: EOPatch at .* cannot be read.*re-run `srpipe download`"):
        ep.load_patch(tmp_path, "T2", 4)


def test_missing_patch_says_run_download(tmp_path):
    with pytest.raises(TileError, match="no EOPatch at .*run `srpipe download` first"):
        ep.load_patch(tmp_path, "T3", 4)

"""The EOPatch contract: every broken patch is a TileError naming the tile and the fix."""

import ast
import concurrent.futures
import threading

import numpy as np
import pytest
from eolearn.core import EOPatch

from srpipe import eopatch as ep
from srpipe.config import SourceConfig
from srpipe.errors import TileError
from srpipe.sources.sample.source import SampleSource
from tests.helpers import sample_tile


@pytest.fixture(scope="module")
def patch() -> EOPatch:
    return SampleSource(SourceConfig(lr_resolution_m=40.0, n_dates=4, n_vhr_dates=1)).fetch(sample_tile())


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


@pytest.mark.faults
@pytest.mark.parametrize("damage", ["garbage", "truncated", "one bit flipped"])
def test_corrupt_patch_on_disk_names_the_tile_and_the_fix(patch, tmp_path, damage):
    """Every feature is gzipped: its CRC-32 catches a flipped bit that numpy alone would read as data."""
    patch.save(str(ep.patch_dir(tmp_path, "T2")))
    path = ep.patch_dir(tmp_path, "T2") / "data" / "S2_BANDS.npy.gz"
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = bytearray(b"\x1f\x8b truncated")
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(TileError, match=r"tile T2: EOPatch at .* cannot be read.*re-run `srpipe download`"):
        ep.load_patch(tmp_path, "T2", 4)


def test_missing_patch_says_run_download(tmp_path):
    with pytest.raises(TileError, match="no EOPatch at .*run `srpipe download` first"):
        ep.load_patch(tmp_path, "T3", 4)


def test_a_patch_loads_in_the_calling_thread_only(patch, tmp_path, monkeypatch):
    """eo-learn's threaded load runs np.load's header parse (ast) in parallel threads, which CPython 3.11 can fail with
    `SystemError: AST constructor recursion depth mismatch` (gh-106905); load_patch must not start any thread."""
    patch.save(str(ep.patch_dir(tmp_path, "T4")))

    def no_threads(*args, **kwargs):
        raise AssertionError("load_patch started a thread")

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", no_threads)
    monkeypatch.setattr(threading.Thread, "start", no_threads)
    loaded = ep.load_patch(tmp_path, "T4", 4)
    np.testing.assert_array_equal(loaded[ep.VHR_BANDS], np.where(patch[ep.VHR_VALID], patch[ep.VHR_BANDS], 0))
    assert loaded.timestamps == patch.timestamps and loaded.bbox == patch.bbox


def test_an_interpreter_fault_while_loading_is_not_called_a_bad_file(patch, tmp_path, monkeypatch):
    patch.save(str(ep.patch_dir(tmp_path, "T5")))

    def fault(*args, **kwargs):
        raise SystemError("AST constructor recursion depth mismatch (before=48, after=47)")

    monkeypatch.setattr(ast, "literal_eval", fault)  # how np.load parses an .npy header
    with pytest.raises(SystemError, match="AST constructor"):
        ep.load_patch(tmp_path, "T5", 4)
